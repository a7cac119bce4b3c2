"""Progress lines for people watching a pod's log: "shard 3: 120/500 images, 14.2 img/s, ETA 27s"."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """Logs at most one line per `interval_s` as images complete, and a final line from `finish()`."""

    def __init__(
        self,
        shard_index: int,
        total: int,
        interval_s: float,
        logger: logging.Logger = log,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.shard_index = shard_index
        self.total = total
        self.interval_s = interval_s
        self._log = logger
        self._clock = clock
        self._started = clock()
        self._last_line = self._started
        self._done = 0
        self._logged_done = -1

    def line(self, done: int, now: float) -> str:
        elapsed = now - self._started
        rate = done / elapsed if elapsed > 0 else 0.0
        head = f"shard {self.shard_index}: {done}/{self.total} images, {rate:.1f} img/s"
        if done >= self.total:
            return f"{head}, done in {format_duration(elapsed)}"
        if rate > 0:
            return f"{head}, ETA {format_duration((self.total - done) / rate)}"
        return f"{head}, ETA unknown"

    def update(self, done: int) -> None:
        self._done = done
        now = self._clock()
        if now - self._last_line >= self.interval_s:
            self._emit(done, now)

    def finish(self) -> None:
        if self._logged_done != self._done:
            self._emit(self._done, self._clock())

    def _emit(self, done: int, now: float) -> None:
        self._last_line = now
        self._logged_done = done
        self._log.info(self.line(done, now))
