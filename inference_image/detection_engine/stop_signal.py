"""A clean stop on SIGTERM, which Kubernetes sends before it reclaims a node (a spot VM's ~30 s notice).

Python's default for SIGTERM ends the process at once, losing every image since the last commit. Inside
`StopOnSignal` the signal only sets a flag; the pipeline checks it after each batch, stops taking batches,
and the shard commits what is finished and exits with the code that says "preempted" (cli.EXIT_PREEMPTED).
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)


class StopOnSignal:
    """Context manager and predicate: `stop()` is true once one of `signals` arrived."""

    def __init__(self, signals: tuple[signal.Signals, ...] = (signal.SIGTERM,)) -> None:
        self._signals = signals
        self._event = threading.Event()
        self._previous: dict[signal.Signals, object] = {}
        self.received: signal.Signals | None = None

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in self._signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __call__(self) -> bool:
        return self._event.is_set()

    def _handle(self, signum: int, _frame) -> None:
        if not self._event.is_set():
            self.received = signal.Signals(signum)
            log.warning(
                "%s: stopping after the current batch, committing what is finished", self.received.name
            )
        self._event.set()
