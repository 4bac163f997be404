"""The file worker runs in a helper process, passes the function's errors on, and survives a dead helper."""

from __future__ import annotations

import os

import pytest
from tradingd.workflows.file_worker import FileWorker


def whose_pid(parent: int, *, die_in_a_child: bool = False) -> int:
    if die_in_a_child and os.getpid() != parent:
        os._exit(3)  # the helper dies mid-call
    return os.getpid()


def refuse(text: str) -> None:
    raise ValueError(text)


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_calls_run_in_a_helper_process_and_errors_pass_through() -> None:
    worker = FileWorker()
    try:
        assert await worker.call(whose_pid, os.getpid()) != os.getpid()
        with pytest.raises(ValueError, match="no such phase"):
            await worker.call(refuse, "no such phase")
        assert worker.stats()["in_a_thread"] == 0  # an error of the function is not a broken helper
        # A helper that dies is replaced; if that one dies too, the call runs in a thread.
        assert await worker.call(whose_pid, os.getpid(), die_in_a_child=True) == os.getpid()
        assert worker.stats()["in_a_thread"] == 1
        assert await worker.call(whose_pid, os.getpid()) != os.getpid()  # and the next call has a process again
    finally:
        await worker.close(30.0)
