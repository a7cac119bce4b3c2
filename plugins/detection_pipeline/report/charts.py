"""The run report's plotly figures, each a pure function of data already read (no I/O here).

Histograms are binned here (numpy) rather than by plotly.js, so a run of millions of images embeds a few
dozen bars in the page, not millions of numbers.
"""

from __future__ import annotations

import statistics
from datetime import UTC, datetime

import numpy as np
import plotly.graph_objects as go

from detection_pipeline.report.page import plot_text
from detection_pipeline.report.run_data import ShardMetrics

STRAGGLER_FACTOR = 1.5  # a shard that ran this many times the median shard duration is flagged
MAX_CLASSES = 30
_OK, _STRAGGLER = "#4363d8", "#e6194b"


def _layout(fig: go.Figure, title: str, **kwargs) -> go.Figure:
    fig.update_layout(
        title=title, template="plotly_white", margin={"l": 60, "r": 20, "t": 50, "b": 50}, **kwargs
    )
    return fig


def latency_histogram(infer_ms: np.ndarray, bins: int = 40) -> go.Figure:
    """Per-image inference time (each image's share of its batch), with p50/p95 marked."""
    counts, edges = np.histogram(infer_ms, bins=min(bins, max(1, len(np.unique(infer_ms)))))
    centers = (edges[:-1] + edges[1:]) / 2
    fig = go.Figure(
        go.Bar(
            x=centers.tolist(),
            y=counts.tolist(),
            width=np.diff(edges).tolist(),
            marker_color=_OK,
            name="images",
            hovertemplate="%{x:.1f} ms: %{y} images<extra></extra>",
        )
    )
    for q, dash in ((50, "dash"), (95, "dot")):
        value = float(np.percentile(infer_ms, q))
        fig.add_vline(x=value, line_dash=dash, annotation_text=f"p{q} {value:.1f} ms")
    return _layout(
        fig, "Inference time per image (its share of its batch)", xaxis_title="ms", yaxis_title="images"
    )


def _utc(value: datetime) -> str:
    """plotly.js date axes ignore UTC offsets, so send naive UTC times."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(sep=" ")


def stragglers(shards: list[ShardMetrics], factor: float = STRAGGLER_FACTOR) -> set[int]:
    """Shard indexes whose duration exceeds `factor` times the median (needs at least 3 shards to judge)."""
    durations = {s.shard_index: s.duration_s for s in shards if s.duration_s is not None}
    if len(durations) < 3:
        return set()
    median = statistics.median(durations.values())
    return {i for i, d in durations.items() if median > 0 and d > factor * median}


def shard_timeline(shards: list[ShardMetrics]) -> go.Figure:
    """Each shard's start to end as a bar on a time axis; stragglers in red."""
    timed = [s for s in shards if s.started_at is not None and s.finished_at is not None]
    slow = stragglers(timed)
    fig = go.Figure()
    for name, members, color in (
        ("shard", [s for s in timed if s.shard_index not in slow], _OK),
        (
            f"straggler (> {STRAGGLER_FACTOR:g}x median)",
            [s for s in timed if s.shard_index in slow],
            _STRAGGLER,
        ),
    ):
        if not members:
            continue
        fig.add_trace(
            go.Bar(
                orientation="h",
                name=name,
                y=[f"shard {s.shard_index}" for s in members],
                base=[_utc(s.started_at) for s in members],
                x=[s.duration_s * 1000 for s in members],  # a date axis measures bar lengths in ms
                marker_color=color,
                customdata=[
                    [
                        round(s.duration_s, 1),
                        s.raw.get("images"),
                        s.raw.get("images_per_s"),
                        plot_text(s.raw.get("hostname") or "?"),
                    ]
                    for s in members
                ],
                hovertemplate=(
                    "%{y}: %{customdata[0]} s, %{customdata[1]} images, "
                    "%{customdata[2]:.2f} images/s, host %{customdata[3]}<extra></extra>"
                ),
            )
        )
    order = [f"shard {s.shard_index}" for s in sorted(timed, key=lambda s: s.shard_index)]
    fig.update_yaxes(categoryorder="array", categoryarray=list(reversed(order)), title="")
    fig.update_xaxes(type="date", title="time (UTC)")
    return _layout(
        fig,
        "Shards over time (stragglers stand out)",
        height=min(900, 160 + 24 * len(timed)),
        barmode="overlay",
    )


def detections_per_class(label_counts: dict[str, int], top: int = MAX_CLASSES) -> go.Figure:
    """Horizontal bars of detections per class, most frequent on top; the rest summed as 'other'."""
    items = sorted(label_counts.items(), key=lambda kv: (-kv[1], kv[0]))
    shown, rest = items[:top], items[top:]
    if rest:
        shown.append((f"other ({len(rest)} classes)", sum(c for _, c in rest)))
    fig = go.Figure(
        go.Bar(
            orientation="h",
            y=[plot_text(label) for label, _ in shown][::-1],
            x=[count for _, count in shown][::-1],
            marker_color=_OK,
            hovertemplate="%{y}: %{x}<extra></extra>",
        )
    )
    return _layout(
        fig, "Detections per class", xaxis_title="detections", height=min(900, 160 + 22 * len(shown))
    )
