"""Typing for users: an application that installed fluxaorm as docs/index.md says
(``pip install -e``) type-checks with ``mypy --strict``, and ``new_entity`` with a
keyword that names no field, or a value of the wrong type, is a type error.

The example application is examples/typed_app. fluxaorm is installed editable into
a fresh virtual env whose dependencies (and build backend) come from the running
one through a .pth file, so the install needs no package index; then mypy runs
with that env's python on the application and on a file of mistakes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "examples" / "typed_app"

MISTAKES = """\
import fluxaorm
from typed_app import CategoryEntity, UserEntity


def mistakes(orm: fluxaorm.ORM) -> None:
    orm.new_entity(UserEntity, nmae="Tom")  # line 6: no such field
    orm.new_entity(CategoryEntity, name="x")  # line 7: a field of another entity
    orm.new_entity(UserEntity, name=3)  # line 8: an int for a str
    orm.new_entity(UserEntity(), name="x")  # line 9: an instance takes no values
    wrong: CategoryEntity = orm.new_entity(UserEntity)  # line 10: returns a user
"""


def _run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.fixture(scope="module")
def user_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with fluxaorm installed editable from this checkout; its python."""
    venv = tmp_path_factory.mktemp("user-venv")
    made = _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=venv)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    # The dependencies (attrs, redis, pymysql and its stubs, setuptools): the
    # running env's, listed after the editable install's own .pth.
    purelib = _run(
        python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        cwd=venv,
    ).stdout.strip()  # fmt: skip
    (Path(purelib) / "zz_dependencies.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n"
    )
    installed = _run(
        sys.executable, "-m", "pip", "--python", python, "install", "--quiet",
        "--no-deps", "--no-build-isolation", "--editable", ROOT, cwd=venv,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return python


def test_mypy_strict_finds_an_editable_fluxaorm_and_rejects_unknown_fields(
    user_env: Path, tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    """mypy --strict: the example app is clean; each new_entity mistake is an error."""
    for name in ("typed_app.py", "pyproject.toml"):
        shutil.copy(APP / name, tmp_path / name)
    (tmp_path / "mistakes.py").write_text(MISTAKES)
    # mypy's cache is kept between runs (it checks what changed): a few seconds.
    found = getattr(pytestconfig, "cache", None)  # None with -p no:cacheprovider
    cache = found.mkdir("typed_app_mypy") if found else tmp_path / ".mypy_cache"

    checked = _run(
        sys.executable, "-m", "mypy", "--strict", "--cache-dir", cache,
        "--python-executable", user_env, "typed_app.py", "mistakes.py",
        cwd=tmp_path,
    )  # fmt: skip
    out = checked.stdout + checked.stderr

    assert 'module named "fluxaorm"' not in out, out  # the package is found
    assert "typed_app.py:" not in out, out
    errors = {
        int(line) for line in re.findall(r"^mistakes\.py:(\d+): error:", out, re.M)
    }
    assert errors == {6, 7, 8, 9, 10}, out
    assert checked.returncode == 1, out
