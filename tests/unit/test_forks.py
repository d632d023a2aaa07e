"""fluxaorm.forks: the process id pools check, without a system call per check."""

from __future__ import annotations

import os

from fluxaorm import forks
from tests.forking import in_child


def test_the_process_id_is_this_process():
    assert forks.pid == os.getpid()


def test_a_forked_child_sees_its_own_process_id():
    """The fork hook updates the id in the child; the parent's stays as it was."""
    written, pid = in_child(lambda: f"{forks.pid} {os.getpid()}")
    seen, actual = (int(n) for n in written.split())
    assert seen == actual == pid
    assert forks.pid == os.getpid() != pid
