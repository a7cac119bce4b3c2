"""Progress lines: at most one per interval, rate and ETA from images done, one final line."""

from __future__ import annotations

import logging

from detection_engine.progress import Progress, format_duration


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_come_at_the_interval_with_rate_and_eta(caplog):
    clock = FakeClock()
    progress = Progress(shard_index=3, total=500, interval_s=10, clock=clock)
    with caplog.at_level(logging.INFO, logger="detection_engine.progress"):
        clock.now += 5
        progress.update(60)  # before the interval: silent
        clock.now += 5
        progress.update(120)  # 120 images in 10 s
        clock.now += 1
        progress.update(130)  # silent again
        clock.now += 30
        progress.update(500)
        progress.finish()  # the last update already said it: not twice

    assert caplog.messages == [
        "shard 3: 120/500 images, 12.0 img/s, ETA 32s",
        "shard 3: 500/500 images, 12.2 img/s, done in 41s",
    ]


def test_finish_always_leaves_a_last_line(caplog):
    clock = FakeClock()
    progress = Progress(shard_index=0, total=10, interval_s=60, clock=clock)
    with caplog.at_level(logging.INFO, logger="detection_engine.progress"):
        clock.now += 2
        progress.update(10)
        progress.finish()
    assert caplog.messages == ["shard 0: 10/10 images, 5.0 img/s, done in 2s"]


def test_durations_read_naturally():
    assert [format_duration(s) for s in (0.4, 27, 65, 3599, 3725)] == [
        "0s",
        "27s",
        "1m05s",
        "59m59s",
        "1h02m",
    ]
