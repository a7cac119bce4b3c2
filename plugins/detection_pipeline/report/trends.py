"""Runs as a DataFrame, grouped by workload, and each workload's latest run checked against its own history.

Like with like: a trend or a regression check only ever compares runs of one workload (schema.RUNS
`workload_id`: same inputs, same work settings, same hardware), the way a perf test compares one benchmark
across SDK releases. The noise band comes from that history: median +/- NOISE_MADS x the scaled MAD of its
last HISTORY_RUNS runs (never narrower than MIN_BAND of the median, so a perfectly steady history does not flag
jitter). A workload with a single run is one-off: listed, not trended. Records without a workload_id (written
before the column existed) are one-off too.

Pure functions of run records (schema.RUNS dicts as the warehouse's `runs()` returns them), so the dashboard's
numbers are tested without a browser.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

HISTORY_RUNS = 10  # the latest run is compared with (at most) this many earlier runs of its workload
MIN_HISTORY = 2  # fewer earlier runs than this: no noise band to judge against
NOISE_MADS = 3.0  # the band's half-width in scaled MADs (1.4826 x MAD estimates a normal sigma)
MIN_BAND = 0.05  # ... but never under 5% of the median

METRICS: dict[str, tuple[str, bool | None]] = {  # column -> (label, worse when higher; None: never judged)
    "images_per_s": ("images/s", False),
    "cost_per_1000": ("cost per 1,000 images (USD)", True),
    "wall_s": ("runtime (s)", None),  # shown, not judged: input size and cold starts move it
}
VERSIONS = {  # column -> label; what may change between runs of one workload
    "torch_version": "torch",
    "torchvision_version": "torchvision",
    "cuda_version": "CUDA",
    "container_image": "container",
    "project_version": "project",
    "weights_sha256": "weights sha256",
}
_RENAMES = {"cost_per_1000_images_usd": "cost_per_1000"}


@dataclass(frozen=True)
class Check:
    """One metric of a workload's latest run against the band of its history."""

    metric: str
    label: str
    latest: float | None
    median: float | None
    band: float | None  # half-width around the median
    relative: float | None  # (latest - median) / median
    regressed: bool


@dataclass(frozen=True)
class WorkloadCheck:
    workload_id: str
    label: str
    latest_run: str
    history_runs: int
    checks: list[Check]
    version_changes: list[str]  # "torch 2.14.1 -> 2.15.0": the latest run's versions vs its history's

    @property
    def regressed(self) -> bool:
        return any(c.regressed for c in self.checks)


def _utc(column: pd.Series) -> pd.Series:
    return pd.to_datetime(column, utc=True, errors="raise", format="mixed")


def runs_frame(records: pd.DataFrame | list[dict]) -> pd.DataFrame:
    """One row per run, in the order the runs were executed, with the columns the dashboard needs.

    `records` is the warehouse's `runs_frame()` (or `runs()`'s dicts); each backend's dtypes (DuckDB's
    datetime64 dates, BigQuery's dbdate and nullable Int64) are read as plain values, nulls as None."""
    if isinstance(records, pd.DataFrame):
        frame = records.astype(object).where(records.notna(), None)
    else:
        frame = pd.DataFrame.from_records(records)
    frame = frame.rename(columns=_RENAMES)
    if frame.empty:
        return frame
    for column in ("run_type", "model_name", "weights_id", "workload_id", "started_at", "recorded_at"):
        if column not in frame:
            frame[column] = None
    for column in (*METRICS, *VERSIONS, "processed", "machine_type", "gpu_type", "gpu_count"):
        if column not in frame:
            frame[column] = None
    when = _utc(frame.get("logical_date", pd.Series(None, index=frame.index)))
    when = when.fillna(_utc(frame.get("run_date", pd.Series(None, index=frame.index))))
    if when.isna().any():
        missing = frame.loc[when.isna(), "run_id"].tolist()
        raise ValueError(f"runs {missing} have neither logical_date nor run_date")
    frame["when"] = when  # the charts' x axis
    # "latest" is the last executed, so a backfill of an old date counts as new
    frame["executed"] = _utc(frame["started_at"]).fillna(_utc(frame["recorded_at"])).fillna(when)
    frame["model_version"] = frame["model_name"].fillna("?") + " / " + frame["weights_id"].fillna("?")
    frame["sdk_version"] = (
        "torch "
        + frame["torch_version"].fillna("?")
        + " / torchvision "
        + frame["torchvision_version"].fillna("?")
        + frame["container_image"].map(lambda image: f" / {image}" if image else "")
    )
    frame["workload"] = frame["workload_id"].where(frame["workload_id"].notna(), "run:" + frame["run_id"])
    for column in METRICS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame.sort_values(["executed", "when", "run_id"], kind="stable").reset_index(drop=True)


def workload_label(runs: pd.DataFrame) -> str:
    """What a workload is, for people: its model, inputs and hardware (from its latest run)."""
    last = runs.iloc[-1]
    gpus = f", {last['gpu_count']} x {last['gpu_type']}" if last.get("gpu_type") else ""
    images = f"{int(last['processed']):,} images" if pd.notna(last.get("processed")) else "? images"
    return f"{last['model_version']}, {images}, {last.get('machine_type') or '?'}{gpus}"


def split_workloads(frame: pd.DataFrame) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Trended workloads (two runs or more; most recently run first) and the one-off runs."""
    if frame.empty:
        return {}, frame
    sizes = frame.groupby("workload")["run_id"].transform("size")
    trended = frame[sizes > 1]
    order = trended.groupby("workload")["executed"].max().sort_values(ascending=False).index
    return {w: trended[trended["workload"] == w] for w in order}, frame[sizes == 1]


def check_workload(runs: pd.DataFrame, *, history_runs: int = HISTORY_RUNS) -> WorkloadCheck:
    """The workload's latest executed run vs the median and MAD of up to `history_runs` runs before it."""
    latest, history = runs.iloc[-1], runs.iloc[:-1].tail(history_runs)
    checks = [_check(column, history[column], latest[column]) for column in METRICS]
    return WorkloadCheck(
        workload_id=str(latest["workload"]),
        label=workload_label(runs),
        latest_run=str(latest["run_id"]),
        history_runs=len(history),
        checks=checks,
        version_changes=_version_changes(history, latest),
    )


def _check(column: str, history: pd.Series, latest: object) -> Check:
    label, worse_if_higher = METRICS[column]
    values = history.dropna()
    if pd.isna(latest) or len(values) < MIN_HISTORY:
        return Check(column, label, None if pd.isna(latest) else float(latest), None, None, None, False)
    median = float(values.median())
    mad = float((values - median).abs().median()) * 1.4826
    band = max(NOISE_MADS * mad, MIN_BAND * abs(median))
    latest = float(latest)
    relative = (latest - median) / median if median else None
    if worse_if_higher is None:
        regressed = False
    elif worse_if_higher:
        regressed = latest > median + band
    else:
        regressed = latest < median - band
    return Check(column, label, latest, median, band, relative, regressed)


def _version_changes(history: pd.DataFrame, latest: pd.Series) -> list[str]:
    """Each version the latest run differs in from its history's most frequent (latest-first on ties)."""
    changes = []
    for column, label in VERSIONS.items():
        before = history[column].dropna()
        if before.empty or pd.isna(latest[column]):
            continue
        usual = before.iloc[::-1].value_counts(sort=True).index[0]
        if latest[column] != usual:
            changes.append(f"{label} {usual} -> {latest[column]}")
    return changes


def checks_frame(checks: list[WorkloadCheck]) -> pd.DataFrame:
    """The regression checks as a table: one row per workload and judged metric."""
    rows = [
        {
            "workload": c.label,
            "latest run": c.latest_run,
            "metric": m.label,
            "latest": m.latest,
            "history median": m.median,
            "noise band (+/-)": m.band,
            "change": None if m.relative is None else f"{100 * m.relative:+.1f}%",
            "verdict": "REGRESSED"
            if m.regressed
            else ("ok" if m.median is not None else "too little history"),
            "versions changed": "; ".join(c.version_changes) or "none",
        }
        for c in checks
        for m in c.checks
        if METRICS[m.metric][1] is not None
    ]
    return pd.DataFrame(rows)
