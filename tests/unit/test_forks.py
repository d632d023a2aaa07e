"""fluxaorm.forks: the process id pools check, without a system call per check."""

from __future__ import annotations

import os

from fluxaorm import forks


def test_the_process_id_is_this_process():
    assert forks.pid == os.getpid()


def test_a_forked_child_sees_its_own_process_id():
    """The fork hook updates the id in the child; the parent's stays as it was."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write, f"{forks.pid} {os.getpid()}".encode())
        finally:
            os._exit(0)
    os.close(write)
    seen, actual = (int(n) for n in os.read(read, 64).split())
    os.close(read)
    os.waitpid(pid, 0)
    assert seen == actual == pid
    assert forks.pid == os.getpid() != pid
