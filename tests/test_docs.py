"""The documentation runs: every Python block of README.md and docs/*.md, page by page.

How a page is written so that this test can run it (CONTRIBUTING.md says the same):

* Every fenced ```` ```python ```` block runs, in page order, in one namespace per
  page: the module ``app``, as if the page were pasted into ``app.py`` (so entity
  names are ``app.UserEntity``). Each page runs in a process of its own.
* A ```` ```text ```` block that directly follows a Python block (only blank lines
  between) is what that block prints: stdout and stderr (log lines included),
  compared line by line after stripping trailing spaces and blank lines at either
  end. In it, ``...`` stands for any text, as doctest's ELLIPSIS (use it sparingly,
  for what differs from run to run; prefer printing stable values). A Python block
  without such a ``text`` block must print nothing.
* A page is self-contained, or its first paragraph is one line
  ``> Continues [Title](page.md) ...``: the whole of that page (and of the page it
  continues, and so on) runs first, in the same process, its output unchecked.
* Before each page the runner empties the database and Redis DB that ``make demo``
  uses (``fluxaorm_demo`` and DB 14, or ``FLUXAORM_DEMO_MYSQL_URL`` /
  ``FLUXAORM_DEMO_REDIS_URL``, which also replace those URLs in the code), so pages
  run in any order. The tutorial (docs/index.md) must also run twice in a row with
  nothing emptied in between, as a reader would run it.
* A block that shows a file of the repository instead of code to run is preceded by
  ``<!-- file: path -->``: it must equal that file, and the page runs the file
  itself in a later block.

Other fenced blocks (``sh``, ``sql``, ``text`` not after a Python block) are not run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from urllib.parse import urlsplit

import pymysql
import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TUTORIAL = ROOT / "docs" / "index.md"

DOCS_MYSQL_URL = "mysql://root@127.0.0.1:3306/fluxaorm_demo"
DOCS_REDIS_URL = "redis://127.0.0.1:6379/14"
MYSQL_URL = os.environ.get("FLUXAORM_DEMO_MYSQL_URL", DOCS_MYSQL_URL)
REDIS_URL = os.environ.get("FLUXAORM_DEMO_REDIS_URL", DOCS_REDIS_URL)

MARKER = "@@fluxaorm-docs@@"
PAGE_TIMEOUT = 120.0

_FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w+-]*)[^\n]*$")
_CONTINUES = re.compile(r"^> Continues \[[^\]]+\]\((?P<page>[\w./-]+\.md)\)")
_FILE = re.compile(r"^<!-- file: (?P<path>[\w./-]+) -->$")


@dataclass(frozen=True)
class Block:
    """One fenced Python block of a page and the output the page says it prints."""

    path: Path
    line: int  # the line of the block's first line of code, from 1
    code: str
    expected: str | None  # the following text block, or None: must print nothing
    file: str | None  # shown file (``<!-- file: ... -->``): compared, not run

    @property
    def label(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


@dataclass(frozen=True)
class Page:
    """A documentation page: its Python blocks and the page it continues, if any."""

    path: Path
    blocks: tuple[Block, ...]
    continues: Path | None


def parse_page(path: Path) -> Page:
    """Split a Markdown page into its Python blocks with their expected output."""
    lines = path.read_text(encoding="utf-8").splitlines()
    fences: list[tuple[str, int, int, str, str | None]] = []  # lang, open, close, ...
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent = len(match["indent"])
        start = i + 1
        end = start
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        code = "\n".join(line[indent:] for line in lines[start:end]) + "\n"
        prev = i - 1
        while prev >= 0 and not lines[prev].strip():
            prev -= 1
        shown = _FILE.match(lines[prev].strip()) if prev >= 0 else None
        fences.append((match["lang"], i, end, code, shown["path"] if shown else None))
        i = end + 1
    blocks = []
    for n, (lang, opening, closing, code, shown) in enumerate(fences):
        if lang != "python":
            continue
        expected = None
        if n + 1 < len(fences) and fences[n + 1][0] == "text":
            between = lines[closing + 1 : fences[n + 1][1]]
            if all(not text.strip() for text in between):
                expected = fences[n + 1][3]
        blocks.append(Block(path, opening + 2, code, expected, shown))
    return Page(path, tuple(blocks), _continued(path, lines))


def _continued(path: Path, lines: list[str]) -> Path | None:
    """The page named by a ``> Continues [..](page.md)`` line before the first section."""
    for line in lines:
        if line.startswith("## "):
            return None
        match = _CONTINUES.match(line)
        if match:
            return (path.parent / match["page"]).resolve()
    return None


def output_matches(expected: str, actual: str) -> bool:
    """Whether printed output matches the page's text block (``...``: any text)."""
    want = _normalise(expected)
    got = _normalise(actual)
    pattern = ".*?".join(re.escape(piece) for piece in want.split("..."))
    return re.fullmatch(pattern, got, re.DOTALL) is not None


def _normalise(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines()).strip(
        "\n"
    )


def _chain(page: Page) -> list[Page]:
    """The pages to run, in order: the continued pages first, then ``page``."""
    chain = [page]
    seen = {page.path}
    while chain[0].continues is not None:
        parent = chain[0].continues
        assert parent.exists(), (
            f"{page.path.name} continues {parent.name}: no such page"
        )
        assert parent not in seen, f"{page.path.name}: pages continue each other"
        seen.add(parent)
        chain.insert(0, parse_page(parent))
    return chain


def _code(block: Block) -> str:
    if block.file is not None:
        return ""  # a shown file runs where the page runs it
    return block.code.replace(DOCS_MYSQL_URL, MYSQL_URL).replace(
        DOCS_REDIS_URL, REDIS_URL
    )


def run_pages(pages: list[Page]) -> list[tuple[Block, str]]:
    """Run the pages' blocks in one process; return each block of the last page with
    what it printed. Fails the test, with the output, when a block raises."""
    blocks = [block for page in pages for block in page.blocks]
    payload = [
        {"path": str(b.path.relative_to(ROOT)), "line": b.line, "code": _code(b)}
        for b in blocks
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)
    # A session of its own, so a page that hangs is killed with every process it
    # started (a worker it runs, say).
    with subprocess.Popen(
        [sys.executable, "-m", "tests.docs_child"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env=env,
        start_new_session=True,
    ) as proc:
        try:
            stdout, _ = proc.communicate(json.dumps(payload), timeout=PAGE_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, _ = proc.communicate()
            pytest.fail(
                f"{pages[-1].path.name} did not finish in {PAGE_TIMEOUT} s:\n{stdout}"
            )
    outputs: dict[int, list[str]] = {}
    current: int | None = None
    failed: int | None = None
    for line in stdout.splitlines():
        if line.startswith(MARKER):
            word = line.split()[1]
            if word == "failed":
                failed = int(line.split()[2])
            elif word != "end":
                current = int(word)
                outputs[current] = []
            continue
        if current is not None:
            outputs[current].append(line)
    if failed is not None or proc.returncode != 0:
        where = blocks[failed].label if failed is not None else "the page runner"
        shown = "\n".join(outputs.get(failed if failed is not None else -1, []))
        pytest.fail(
            f"{where} raised (exit status {proc.returncode}):\n{shown or stdout}"
        )
    first = len(blocks) - len(pages[-1].blocks)
    return [
        (blocks[i], "\n".join(outputs.get(i, []))) for i in range(first, len(blocks))
    ]


def check_outputs(results: list[tuple[Block, str]]) -> None:
    """Every block printed what its page says, and blocks without output nothing."""
    wrong = []
    for block, printed in results:
        expected = block.expected or ""
        if not output_matches(expected, printed):
            wrong.append(
                f"{block.label} printed:\n{printed}\n--- the page says:\n{expected}"
            )
    if wrong:
        pytest.fail("\n=====\n".join(wrong), pytrace=False)


def empty_servers() -> None:
    """Drop every table of the docs' database and empty their Redis DB."""
    url = urlsplit(MYSQL_URL)
    database = url.path.lstrip("/")
    conn = pymysql.connect(
        host=url.hostname or "127.0.0.1",
        port=url.port or 3306,
        user=url.username or "root",
        password=url.password or "",
        autocommit=True,
    )
    try:
        cursor = conn.cursor()
        cursor.execute(f"DROP DATABASE IF EXISTS `{database}`")
        cursor.execute(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4")
    finally:
        conn.close()
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.flushdb()
    finally:
        client.close()


@pytest.mark.parametrize("path", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_page_runs_and_prints_what_it_says(path: Path) -> None:
    """Every Python block of the page runs, in order, and prints what the page shows."""
    page = parse_page(path)
    for block in page.blocks:
        if block.file is not None:
            shown = (ROOT / block.file).read_text(encoding="utf-8")
            assert block.code == shown, f"{block.label} differs from {block.file}"
    empty_servers()
    check_outputs(run_pages(_chain(page)))


def test_tutorial_runs_twice_in_a_row() -> None:
    """A reader can run the tutorial again on the database of the first run."""
    page = parse_page(TUTORIAL)
    empty_servers()
    check_outputs(run_pages([page]))
    check_outputs(run_pages([page]))


def test_a_text_block_after_a_python_block_is_its_output(tmp_path: Path) -> None:
    """The parser pairs a Python block with the text block right after it, only."""
    page = tmp_path / "page.md"
    page.write_text(
        "# T\n\n> Continues [Other](other.md): run it first.\n\n"
        '```python\nprint("a")\n```\n\n```text\na\n```\n\n'
        "```python\nx = 1\n```\n\nSome prose.\n\n```text\nnot output\n```\n"
    )
    parsed = parse_page(page)
    assert [(b.line, b.expected) for b in parsed.blocks] == [(6, "a\n"), (14, None)]
    assert parsed.continues == tmp_path / "other.md"


def test_ellipsis_in_expected_output_stands_for_any_text() -> None:
    """``...`` matches any text, and everything else must match exactly."""
    assert output_matches("id=... done\n", "id=1795752777949-0 done")
    assert output_matches("a\n...\nz", "a\nb\nc\nz\n")
    assert not output_matches("id=... done", "id=1 gone")
    assert not output_matches("", "something printed")


def test_api_reference_covers_every_public_name() -> None:
    """docs/api.md renders, or names, every name of fluxaorm's and fluxaorm.testing's
    __all__, so a new public name cannot be left out of the reference."""
    import fluxaorm
    import fluxaorm.testing

    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    rendered = set(re.findall(r"^::: ([\w.]+)$", text, re.MULTILINE))
    missing = [
        f"{module.__name__}.{name}"
        for module in (fluxaorm, fluxaorm.testing)
        for name in module.__all__
        if f"{module.__name__}.{name}" not in rendered
        and f"`{module.__name__}.{name}`" not in text
    ]
    assert not missing, f"docs/api.md does not cover {missing}"
    for name in rendered:  # each directive names something that exists
        assert attrgetter(name.removeprefix("fluxaorm."))(fluxaorm) is not None
