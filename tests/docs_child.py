"""Run the Python blocks of documentation pages in one process, for tests/test_docs.py.

Run as ``python -m tests.docs_child`` from the repository root with a JSON list of
blocks on stdin (``{"label": "docs/index.md:57", "path": ..., "line": ..., "code":
...}``). Every block runs in order in the namespace of one module named ``app``, as
a reader pasting the page into a file ``app.py`` would run it (so entity names are
``app.UserEntity``). Before each block it prints the marker line
``@@fluxaorm-docs@@ <index>``; stderr is expected to be merged into stdout, so the
parent can cut the output into what each block printed. A block that raises prints
its traceback and ends the process with status 1.
"""

from __future__ import annotations

import json
import sys
import traceback
import types

MARKER = "@@fluxaorm-docs@@"


def _say(text: str) -> None:
    sys.stderr.flush()
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def main() -> int:
    blocks = json.load(sys.stdin)
    module = types.ModuleType("app")
    module.__file__ = "app.py"
    sys.modules["app"] = module
    for index, block in enumerate(blocks):
        _say(f"{MARKER} {index}")
        # Pad with newlines so tracebacks point at the page's own line numbers.
        source = "\n" * (block["line"] - 1) + block["code"]
        try:
            code = compile(source, block["path"], "exec", dont_inherit=True)
            exec(code, module.__dict__)
        except BaseException:
            sys.stdout.flush()
            traceback.print_exc(file=sys.stdout)
            _say(f"{MARKER} failed {index}")
            return 1
        sys.stdout.flush()
        sys.stderr.flush()
    _say(f"{MARKER} end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
