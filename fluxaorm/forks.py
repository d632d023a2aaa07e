"""This process's id, kept current across ``fork()`` without a system call per check.

Pools compare it with the id they were made in, on every connection they hand
out or take back: a forked child must not use the sockets it inherited, which
stay the parent's. ``os.getpid()`` is a system call each time; this module
reads it once and again in a child, from an ``os.register_at_fork`` hook (run
by ``os.fork()``, ``multiprocessing`` and servers that fork their workers).
"""

from __future__ import annotations

import os

__all__ = ["pid"]

pid: int = os.getpid()


def _forked() -> None:
    global pid
    pid = os.getpid()


if hasattr(os, "register_at_fork"):  # no fork() on Windows: the id never changes
    os.register_at_fork(after_in_child=_forked)
