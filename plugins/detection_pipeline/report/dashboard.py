"""The dashboard across runs: throughput, cost and runtime over time and by version, and a regression mark.

Building it is a pure function of the run records (`render_dashboard`); `build_dashboard` only writes the page.
The command in `__main__` is the thin part that opens the warehouse.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from detection_pipeline.report.page import Page, banner, empty, plot_text, table, write_text
from detection_pipeline.report.trends import Change, Comparison, RunPoint, compare_latest, to_points

_METRICS: tuple[tuple[str, str, Callable[[RunPoint], float | None]], ...] = (
    ("images_per_s", "images/s", lambda p: p.images_per_s),
    ("cost_per_1000", "cost per 1,000 images (USD)", lambda p: p.cost_per_1000),
    ("wall_s", "runtime (s)", lambda p: p.wall_s),
)
_REGRESSION_COLOR = "#cf222e"
_GROUP_COLORS = plotly.colors.qualitative.Plotly  # the same group keeps its colour in both rows


def build_dashboard(records: list[dict], out_uri: str, *, regression_threshold: float = 0.10) -> str:
    """Write the dashboard for `records` (schema.RUNS dicts) to `out_uri` (any fsspec URI); return the URI."""
    return write_text(out_uri, render_dashboard(records, regression_threshold=regression_threshold))


def render_dashboard(records: list[dict], *, regression_threshold: float = 0.10) -> str:
    points = to_points(records)
    comparison = compare_latest(points, regression_threshold)
    subtitle = (
        f"{len(points)} runs, {points[0].when.date()} to {points[-1].when.date()}" if points else "no runs"
    )
    page = Page("Detection runs dashboard", subtitle)
    if not points:
        page.section("latest", "Latest run", empty("No runs recorded yet."))
        return page.render()

    page.section("latest", "Latest run vs the previous run of its model", *_comparison(comparison))
    page.section(
        "over-time",
        "Over time",
        *(_over_time(page, points, key, title, value, comparison) for key, title, value in _METRICS),
    )
    page.section(
        "by-sdk",
        "By torch / torchvision / container version",
        _by_group(page, points, "sdk", lambda p: p.sdk_version),
    )
    page.section("by-model", "By model version", _by_group(page, points, "model", lambda p: p.model_version))
    page.section("runs", "Runs", _runs_table(points))
    return page.render()


def _pct(relative: float | None) -> str:
    return "n/a" if relative is None else f"{100 * relative:+.1f}%"


def _comparison(comparison: Comparison) -> list[str]:
    latest, previous = comparison.latest, comparison.previous
    if previous is None:
        return [
            banner(
                f"Run {latest.run_id} is the first run of {latest.model_version}: nothing to compare.", "warn"
            )
        ]
    regressed = [c for c in comparison.changes if c.regressed]
    threshold = f"{100 * comparison.threshold:g}%"
    if regressed:
        what = "; ".join(f"{c.metric} {_pct(c.relative)}" for c in regressed)
        head = banner(
            f"REGRESSION: run {latest.run_id} ({latest.model_version}) vs run {previous.run_id}: {what} "
            f"(threshold {threshold}).",
            "bad",
        )
    else:
        head = banner(
            f"No regression beyond {threshold}: run {latest.run_id} vs run {previous.run_id} ({latest.model_version}).",
            "good",
        )
    rows = [
        (c.metric, c.previous, c.latest, _pct(c.relative), "REGRESSED" if c.regressed else "")
        for c in comparison.changes
    ]
    rows += [
        ("torch / torchvision / image", previous.sdk_version, latest.sdk_version, "", ""),
        ("run", previous.run_id, latest.run_id, "", ""),
    ]
    return [head, table(("", "previous", "latest", "change", ""), rows, numeric=(1, 2, 3))]


def _x(point: RunPoint) -> str:
    return point.when.replace(tzinfo=None).isoformat(sep=" ")


def _over_time(
    page: Page,
    points: list[RunPoint],
    key: str,
    title: str,
    value: Callable[[RunPoint], float | None],
    comparison: Comparison | None,
) -> str:
    """One point per run, one line per model version, the regressed latest run marked."""
    with_value = [p for p in points if value(p) is not None]
    if not with_value:
        return empty(f"No run recorded {title}.")
    fig = go.Figure()
    for version in sorted({p.model_version for p in with_value}):
        members = sorted((p for p in with_value if p.model_version == version), key=lambda p: p.when)
        fig.add_trace(
            go.Scatter(
                x=[_x(p) for p in members],
                y=[value(p) for p in members],
                mode="lines+markers",
                name=plot_text(version),
                text=[plot_text(f"{p.run_id} ({p.run_type}), {p.sdk_version}") for p in members],
                hovertemplate="%{x}<br>%{y:.3f}<br>%{text}<extra></extra>",
            )
        )
    change = _regressed_change(comparison, key)
    if change is not None:
        latest = comparison.latest
        fig.add_trace(
            go.Scatter(
                x=[_x(latest)],
                y=[value(latest)],
                mode="markers",
                name="regression",
                marker={"symbol": "x", "size": 16, "color": _REGRESSION_COLOR, "line": {"width": 2}},
                hovertemplate=f"regressed {_pct(change.relative)}<extra></extra>",
            )
        )
        fig.add_annotation(
            x=_x(latest),
            y=value(latest),
            text=f"regressed {_pct(change.relative)}",
            font={"color": _REGRESSION_COLOR},
            arrowcolor=_REGRESSION_COLOR,
        )
    fig.update_layout(
        title=f"{title} per run", template="plotly_white", xaxis_title="logical date", yaxis_title=title,
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
    )  # fmt: skip
    return page.figure(fig, f"chart-time-{key}")


def _regressed_change(comparison: Comparison | None, key: str) -> Change | None:
    """The latest run's regressed change in this chart's metric, if any."""
    if comparison is None:
        return None
    return next((c for c in comparison.changes if c.regressed and c.key == key), None)


def _by_group(page: Page, points: list[RunPoint], key: str, group: Callable[[RunPoint], str]) -> str:
    """Images/s and cost per 1,000 images per version: one box (every run a dot) per group."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08)
    groups = sorted({group(p) for p in points})
    for row, (_, title, value) in enumerate(_METRICS[:2], start=1):
        for color, name in zip(itertools.cycle(_GROUP_COLORS), groups, strict=False):
            members = [p for p in points if group(p) == name and value(p) is not None]
            if not members:
                continue
            fig.add_trace(
                go.Box(
                    x=[plot_text(name)] * len(members),
                    y=[value(p) for p in members],
                    name=plot_text(name),
                    boxpoints="all",
                    jitter=0.3,
                    pointpos=0,
                    text=[plot_text(p.run_id) for p in members],
                    hovertemplate="%{text}: %{y:.3f}<extra></extra>",
                    showlegend=False,
                    marker_color=color,
                ),
                row=row,
                col=1,
            )
        fig.update_yaxes(title_text=title, row=row, col=1)
    fig.update_layout(template="plotly_white", height=620, margin={"l": 60, "r": 20, "t": 30, "b": 80})
    return page.figure(fig, f"chart-by-{key}")


def _runs_table(points: list[RunPoint]) -> str:
    rows = [
        (
            p.run_id,
            p.when.date().isoformat(),
            p.run_type,
            p.model_version,
            p.sdk_version,
            p.processed,
            p.images_per_s,
            p.cost_per_1000,
            p.wall_s,
        )
        for p in reversed(points)
    ]
    header = ("run", "logical date", "type", "model", "torch / torchvision / image", "images")
    header += ("images/s", "cost per 1k (USD)", "runtime (s)")
    return table(header, rows, numeric=(5, 6, 7, 8))
