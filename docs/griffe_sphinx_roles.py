"""A griffe extension for the API reference: Sphinx roles in docstrings as code.

fluxaorm's docstrings name other objects with Sphinx roles (``:meth:`validate```,
``:class:`~fluxaorm.StreamError```), which Markdown would show verbatim. This turns
each into inline code (``validate``, ``StreamError``: a leading ``~`` keeps the last
dotted part, as Sphinx does). mkdocs.yml loads it for mkdocstrings; it is not part
of the package.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:meth|class|func|attr|exc|mod|data|obj):`(~?)([^`]+)`")


def _code(match: re.Match[str]) -> str:
    target = match[2]
    if match[1]:
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


def plain_roles(text: str) -> str:
    """Return ``text`` with every Sphinx role written as inline code."""
    return _ROLE.sub(_code, text)


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles in every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = plain_roles(obj.docstring.value)
