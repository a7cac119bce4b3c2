"""Run a real subprocess and measure what it cost: its exit code, output and peak memory (RSS).

`subprocess.run` reaps the child itself, so its resource usage is lost; `os.wait4` returns that child's own
usage (not the maximum over every child the test process ever had, as RUSAGE_CHILDREN would), so a test can
assert that a hostile input did not make the process read it into memory.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Sequence


class Measured(subprocess.CompletedProcess):
    """A finished process, with `peak_rss_mib`: the most resident memory it held at any moment."""

    def __init__(self, args, returncode: int, stdout: str, stderr: str, peak_rss_mib: float) -> None:
        super().__init__(args, returncode, stdout, stderr)
        self.peak_rss_mib = peak_rss_mib


def run_measured(command: Sequence[str], *, env: dict[str, str], timeout: float) -> Measured:
    """Run `command` to its end (killed and `TimeoutExpired` past `timeout`), reading both streams as text."""
    process = subprocess.Popen(
        list(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace", env=env
    )
    output: dict[str, str] = {}
    readers = [
        threading.Thread(target=lambda name=name, stream=stream: output.__setitem__(name, stream.read()))
        for name, stream in (("stdout", process.stdout), ("stderr", process.stderr))
    ]
    for reader in readers:
        reader.start()
    killer = threading.Timer(timeout, process.kill)
    killer.start()
    try:
        _, status, usage = os.wait4(process.pid, 0)
    finally:
        timed_out = not killer.is_alive()
        killer.cancel()
        for reader in readers:
            reader.join()
        process.returncode = -9  # reaped here: keep Popen from waiting on a pid that is gone
    if timed_out:
        raise subprocess.TimeoutExpired(list(command), timeout, output.get("stdout"), output.get("stderr"))
    returncode = os.waitstatus_to_exitcode(status)
    return Measured(list(command), returncode, output["stdout"], output["stderr"], usage.ru_maxrss / 1024)
