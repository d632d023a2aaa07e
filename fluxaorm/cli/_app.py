"""Finding the application's engine for the ``fluxaorm`` command (``--app``).

``--app module:attribute`` (or ``FLUXAORM_APP``) names a ``Registry``, an
``Engine`` or a function returning one; :func:`load_engine` imports it from the
current folder first, as ``python -m`` would, and validates a registry.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from ..engine import Engine
from ..registry import Registry

__all__ = ["AppError", "load_engine"]


class AppError(Exception):
    """The ``--app`` value does not lead to an engine (said in one line)."""


def load_engine(spec: str | None) -> Engine:
    """Import ``module:attribute`` and return the engine it gives.

    The attribute may be dotted (``module:settings.registry``). A function is
    called without arguments; a registry is validated.

    Raises:
        AppError: no ``--app``, a malformed one, a module that cannot be
            imported, a missing attribute or one of another type.
        SchemaError, ConfigurationError: the registry does not validate.
    """
    if not spec:
        raise AppError(
            "no application given: pass --app module:attribute (a Registry, an "
            "Engine or a function returning one) or set FLUXAORM_APP"
        )
    module_name, colon, path = spec.partition(":")
    if not colon or not module_name or not path:
        raise AppError(
            f"--app {spec!r}: expected module:attribute, e.g. myapp.db:registry"
        )
    module = _import(module_name, spec)
    found: Any = module
    for part in path.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise AppError(
                f"--app {spec!r}: {module_name} has no attribute {path!r}"
            ) from None
    if callable(found) and not isinstance(found, (Registry, Engine, type)):
        found = found()
    if isinstance(found, Registry):
        found = found.validate()
    if not isinstance(found, Engine):
        raise AppError(
            f"--app {spec!r} gives an object of type {type(found).__name__}, not a "
            "fluxaorm Registry, Engine or function returning one"
        )
    return found


def _import(module_name: str, spec: str) -> Any:
    # As `python -m`: modules of the folder the command runs in come first.
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise AppError(
                f"--app {spec!r}: no module named {missing!r} (run the command "
                "from your project's folder, or add it to PYTHONPATH)"
            ) from None
        raise AppError(_import_failed(module_name, exc)) from None
    except Exception as exc:  # the application's own import-time error
        raise AppError(_import_failed(module_name, exc)) from None


def _import_failed(module_name: str, exc: BaseException) -> str:
    first = str(exc).splitlines()[0] if str(exc) else ""
    return (
        f"importing {module_name} failed: {type(exc).__name__}: {first} "
        f"(python -c 'import {module_name}' shows the traceback)"
    )
