"""Runs as points in time, grouped by version, and the latest run compared to the previous run of its model.

Pure functions of run records (schema.RUNS dicts as the warehouse's `runs()` returns them, or as JSON), so the
dashboard's numbers are tested without a warehouse or a browser.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime


@dataclass(frozen=True)
class RunPoint:
    run_id: str
    run_type: str
    when: datetime  # the run's logical date (else run date): the charts' x axis
    executed: datetime  # when the run actually ran: orders "latest" and "previous", so backfills count as new
    model_version: str  # model_name / weights_id
    sdk_version: str  # torch, torchvision and container image
    processed: int | None
    images_per_s: float | None
    cost_per_1000: float | None
    wall_s: float | None


@dataclass(frozen=True)
class Change:
    key: str  # the RunPoint attribute compared
    metric: str  # its label
    previous: float | None
    latest: float | None
    relative: float | None  # (latest - previous) / previous
    regressed: bool


@dataclass(frozen=True)
class Comparison:
    latest: RunPoint
    previous: RunPoint | None  # the run of the same model version executed just before, if any
    changes: list[Change]
    threshold: float

    @property
    def regressed(self) -> bool:
        return any(c.regressed for c in self.changes)


def to_datetime(value: object) -> datetime | None:
    """A timestamp or date from DuckDB, BigQuery or JSON, as an aware UTC datetime."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    raise ValueError(f"not a date or timestamp: {value!r}")


def model_version(record: dict) -> str:
    return f"{record.get('model_name') or '?'} / {record.get('weights_id') or '?'}"


def sdk_version(record: dict) -> str:
    parts = [
        f"torch {record.get('torch_version') or '?'}",
        f"torchvision {record.get('torchvision_version') or '?'}",
    ]
    if record.get("container_image"):
        parts.append(str(record["container_image"]))
    return " / ".join(parts)


def _float(value: object) -> float | None:
    return None if value is None else float(value)


def to_point(record: dict) -> RunPoint:
    run_id = record.get("run_id") or "?"
    when = to_datetime(record.get("logical_date")) or to_datetime(record.get("run_date"))
    if when is None:
        raise ValueError(f"run {run_id!r} has neither logical_date nor run_date")
    executed = to_datetime(record.get("started_at")) or to_datetime(record.get("recorded_at")) or when
    return RunPoint(
        run_id=str(run_id),
        run_type=str(record.get("run_type") or ""),
        when=when,
        executed=executed,
        model_version=model_version(record),
        sdk_version=sdk_version(record),
        processed=record.get("processed"),
        images_per_s=_float(record.get("images_per_s")),
        cost_per_1000=_float(record.get("cost_per_1000_images_usd")),
        wall_s=_float(record.get("wall_s")),
    )


def to_points(records: list[dict]) -> list[RunPoint]:
    """One point per run, in the order the runs were executed."""
    return sorted((to_point(r) for r in records), key=lambda p: (p.executed, p.when, p.run_id))


def _change(
    key: str,
    metric: str,
    previous: RunPoint,
    latest: RunPoint,
    worse_if_higher: bool | None,
    threshold: float,
) -> Change:
    """`worse_if_higher`: True for a cost, False for a speed, None for a number shown but never judged."""
    before, after = getattr(previous, key), getattr(latest, key)
    if before is None or after is None or before == 0:
        return Change(key, metric, before, after, None, False)
    relative = (after - before) / before
    if worse_if_higher is None:
        regressed = False
    else:
        regressed = relative > threshold if worse_if_higher else relative < -threshold
    return Change(key, metric, before, after, relative, regressed)


def compare_latest(points: list[RunPoint], threshold: float) -> Comparison | None:
    """The last executed run against the run of the same model version executed before it.

    Regressed when images/s fell, or cost per 1,000 images rose, by more than `threshold` (0.10 = 10%).
    Runtime is shown but never judged: it depends on how many images a run had.
    """
    if threshold < 0:
        raise ValueError(f"regression threshold must be >= 0, got {threshold}")
    if not points:
        return None
    latest = points[-1]
    earlier = [p for p in points[:-1] if p.model_version == latest.model_version]
    previous = earlier[-1] if earlier else None
    if previous is None:
        return Comparison(latest, None, [], threshold)
    changes = [
        _change("images_per_s", "images/s", previous, latest, False, threshold),
        _change("cost_per_1000", "cost per 1,000 images (USD)", previous, latest, True, threshold),
        _change("wall_s", "runtime (s)", previous, latest, None, threshold),
    ]
    return Comparison(latest, previous, changes, threshold)
