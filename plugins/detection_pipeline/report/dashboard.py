"""The dashboard across runs: per workload, throughput, cost and runtime over time and by version, and each
workload's latest run checked against that workload's own history.

Building it is a pure function of the run records (`dashboard_page`); `build_dashboard` only writes the page.
The command in `__main__` is the thin part that opens the warehouse.
"""

from __future__ import annotations

import itertools

import pandas as pd
import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from detection_pipeline.report.page import Page, banner, empty, frame_table, plot_text, write_page
from detection_pipeline.report.trends import (
    METRICS,
    WorkloadCheck,
    check_workload,
    checks_frame,
    runs_frame,
    split_workloads,
)

MAX_WORKLOADS = 12  # the most recently run workloads get charts; the rest are in the tables
_REGRESSION_COLOR = "#cf222e"
_COLORS = plotly.colors.qualitative.Plotly  # one colour per version, the same in both of a workload's charts
_RUN_COLUMNS = {
    "run_id": "run",
    "when": "logical date",
    "run_type": "type",
    "workload_short": "workload",
    "model_version": "model",
    "sdk_version": "torch / torchvision / image",
    "processed": "images",
    "images_per_s": "images/s",
    "cost_per_1000": "cost per 1k (USD)",
    "wall_s": "runtime (s)",
}


def build_dashboard(records: pd.DataFrame | list[dict], out_uri: str) -> str:
    """Write the dashboard for `records` (the warehouse's `runs_frame()`, or schema.RUNS dicts) to `out_uri`
    (any fsspec URI); return the URI.

    plotly.js is written once beside it (see page.write_page)."""
    return write_page(out_uri, dashboard_page(records))


def render_dashboard(records: pd.DataFrame | list[dict]) -> str:
    return dashboard_page(records).render()


def short_id(workload: str) -> str:
    return workload[:12]


def dashboard_page(records: pd.DataFrame | list[dict]) -> Page:
    frame = runs_frame(records)
    if frame.empty:
        page = Page("Detection runs dashboard", "no runs")
        page.section("latest", "Regression check", empty("No runs recorded yet."))
        return page
    trended, one_off = split_workloads(frame)
    subtitle = (
        f"{len(frame)} runs of {frame['workload'].nunique()} workloads, "
        f"{frame['when'].min().date()} to {frame['when'].max().date()}"
    )
    page = Page("Detection runs dashboard", subtitle)
    checks = {workload: check_workload(runs) for workload, runs in trended.items()}
    page.section("checks", "Latest run of each workload vs its own history", *_checks(list(checks.values())))
    for workload, runs in itertools.islice(trended.items(), MAX_WORKLOADS):
        short = short_id(workload)
        page.section(
            f"workload-{short}",
            f"Workload {short}: {checks[workload].label}",
            page.figure(_over_time(runs, checks[workload]), f"chart-{short}-time"),
            page.figure(_by_version(runs), f"chart-{short}-versions"),
        )
    page.section(
        "one-off",
        "One-off workloads (a single run each: listed, not trended)",
        _runs_table(one_off) if not one_off.empty else empty("None."),
    )
    page.section("runs", "All runs", _runs_table(frame))
    return page


def _checks(checks: list[WorkloadCheck]) -> list[str]:
    if not checks:
        return [banner("No workload has run twice yet: nothing to compare.", "warn")]
    parts = []
    for check in checks:
        for metric in (m for m in check.checks if m.regressed):
            versions = "; ".join(check.version_changes) or "no version changed"
            parts.append(
                banner(
                    f"REGRESSION: workload {short_id(check.workload_id)} ({check.label}), run {check.latest_run}: "
                    f"{metric.label} {100 * metric.relative:+.1f}% vs the median of its last "
                    f"{check.history_runs} runs (noise band +/-{metric.band:.3g}); {versions}.",
                    "bad",
                )
            )
    if not parts:
        parts.append(banner("No workload's latest run is outside its history's noise band.", "good"))
    return [*parts, frame_table(checks_frame(checks))]


def _x(when: pd.Series) -> list[str]:
    """plotly.js date axes ignore UTC offsets, so send naive UTC times."""
    return when.dt.tz_convert("UTC").dt.tz_localize(None).dt.strftime("%Y-%m-%d %H:%M:%S").tolist()


def _version_colors(runs: pd.DataFrame) -> dict[str, str]:
    return dict(zip(sorted(runs["sdk_version"].unique()), itertools.cycle(_COLORS), strict=False))


def _over_time(runs: pd.DataFrame, check: WorkloadCheck) -> go.Figure:
    """Images/s, cost per 1,000 images and runtime per run over logical date; one colour per version; the
    regressed latest run marked."""
    fig = make_subplots(rows=len(METRICS), cols=1, shared_xaxes=True, vertical_spacing=0.06)
    colors = _version_colors(runs)
    regressed = {m.metric: m for m in check.checks if m.regressed}
    for row, (column, (label, _)) in enumerate(METRICS.items(), start=1):
        for version, members in runs.dropna(subset=[column]).sort_values("when").groupby("sdk_version"):
            fig.add_trace(
                go.Scatter(
                    x=_x(members["when"]),
                    y=members[column].tolist(),
                    mode="lines+markers",
                    name=plot_text(version),
                    legendgroup=plot_text(version),
                    showlegend=row == 1,
                    marker_color=colors[version],
                    text=[
                        plot_text(f"{r} ({t})")
                        for r, t in zip(members["run_id"], members["run_type"], strict=True)
                    ],
                    hovertemplate="%{x}<br>%{y:.3f}<br>%{text}<extra></extra>",
                ),
                row=row,
                col=1,
            )
        if column in regressed:
            latest = runs.iloc[-1]
            fig.add_trace(
                go.Scatter(
                    x=_x(runs["when"].iloc[-1:]),
                    y=[float(latest[column])],
                    mode="markers",
                    name="regression",
                    showlegend=False,
                    marker={"symbol": "x", "size": 16, "color": _REGRESSION_COLOR, "line": {"width": 2}},
                    hovertemplate=f"regressed {100 * regressed[column].relative:+.1f}%<extra></extra>",
                ),
                row=row,
                col=1,
            )
        fig.update_yaxes(title_text=label, row=row, col=1)
    fig.update_xaxes(title_text="logical date", row=len(METRICS), col=1)
    fig.update_layout(
        title="Per run over time, by torch / torchvision / container version", template="plotly_white",
        height=720, margin={"l": 70, "r": 20, "t": 50, "b": 50},
    )  # fmt: skip
    return fig


def _by_version(runs: pd.DataFrame) -> go.Figure:
    """Each metric per version: one box (every run a dot) per torch / torchvision / container version."""
    fig = make_subplots(rows=1, cols=len(METRICS), subplot_titles=[label for label, _ in METRICS.values()])
    colors = _version_colors(runs)
    for col, column in enumerate(METRICS, start=1):
        for version, members in runs.dropna(subset=[column]).groupby("sdk_version"):
            fig.add_trace(
                go.Box(
                    x=[plot_text(version)] * len(members),
                    y=members[column].tolist(),
                    name=plot_text(version),
                    boxpoints="all",
                    jitter=0.3,
                    pointpos=0,
                    text=[plot_text(r) for r in members["run_id"]],
                    hovertemplate="%{text}: %{y:.3f}<extra></extra>",
                    showlegend=False,
                    marker_color=colors[version],
                ),
                row=1,
                col=col,
            )
    fig.update_xaxes(showticklabels=False)
    fig.update_layout(
        title="By version (hover for the version)", template="plotly_white", height=380,
        margin={"l": 60, "r": 20, "t": 70, "b": 30},
    )  # fmt: skip
    return fig


def _runs_table(frame: pd.DataFrame) -> str:
    shown = frame.iloc[::-1].assign(
        when=frame["when"].dt.strftime("%Y-%m-%d"),
        workload_short=frame["workload"].map(lambda w: None if w.startswith("run:") else short_id(w)),
    )
    return frame_table(shown[list(_RUN_COLUMNS)].rename(columns=_RUN_COLUMNS))
