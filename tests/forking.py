"""Run a function in a forked child and read back what it reports."""

from __future__ import annotations

import os
from collections.abc import Callable


def in_child(report: Callable[[], str]) -> tuple[str, int]:
    """Fork; the child writes ``report()`` to a pipe and leaves at once.

    Returns:
        What the child wrote (empty if ``report`` raised), and its process id.
    """
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write, report().encode())
        finally:
            os._exit(0)
    os.close(write)
    written = os.read(read, 64)
    os.close(read)
    os.waitpid(pid, 0)
    return written.decode(), pid
