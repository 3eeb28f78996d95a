"""A role's process once its work has stopped: no signal may reach asyncio's closed self-pipe."""

from __future__ import annotations

import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(
    """
    import asyncio, signal
    from sesflow.common.runtime import _until_done, stop_on_signals

    async def work():
        stop = asyncio.Event()
        stop_on_signals(stop)
        signal.raise_signal(signal.SIGTERM)  # what `sesflow up` sends
        await stop.wait()

    asyncio.run(_until_done(work()))
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    assert signal.set_wakeup_fd(-1) == -1  # asyncio's self-pipe is no longer the wakeup fd
    signal.raise_signal(signal.SIGINT)  # a late Ctrl-C: ignored, nothing printed
    print("stopped quietly")
    """
)


def test_a_late_signal_after_the_work_stopped_is_ignored_quietly() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "stopped quietly"
    assert done.stderr == ""
