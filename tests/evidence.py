"""Everything a user could read from fluxaorm's objects and errors, for the tests
that check no password ever shows (tests/test_security.py, tests/test_cluster_tls.py)."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

import pytest


class Evidence:
    """Everything a user could see: reprs, strs, errors with their whole chains."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.errors: list[BaseException] = []

    def see(self, *objects: Any) -> None:
        """Record the repr and str of each object."""
        for obj in objects:
            self.texts += [repr(obj), str(obj)]

    def error(self, exc: BaseException) -> BaseException:
        """Record the error, its traceback and every error chained to it
        (``__cause__``, ``__context__`` even where a traceback hides it) or that
        it wraps (``.orig``)."""
        self.errors.append(exc)
        self.texts.append("".join(traceback.format_exception(exc)))
        seen: set[int] = set()
        stack: list[BaseException | None] = [exc]
        while stack:
            current = stack.pop()
            if current is None or id(current) in seen:
                continue
            seen.add(id(current))
            orig = getattr(current, "orig", None)
            self.see(current, current.args, orig)
            stack += [current.__cause__, current.__context__, orig]
        return exc

    def expect(self, kind: type[BaseException], call: Callable[[], object]) -> None:
        """Call ``call``, which must raise ``kind``, and record the error."""
        with pytest.raises(kind) as caught:
            call()
        self.error(caught.value)
