"""The run report: one self-contained HTML file beside the run's files, readable with no network."""

from __future__ import annotations

import json

from detection_engine import layout
from detection_pipeline.report import charts
from detection_pipeline.report.gallery import build_gallery, label_name
from detection_pipeline.report.page import Page, banner, empty, esc, key_values, table, write_page
from detection_pipeline.report.run_data import RunData, read_run

_MAX_ERROR_TEXT = 300

_VERSIONS = (
    ("model", "model_name"),
    ("weights", "weights_id"),
    ("weights sha256", "weights_sha256"),
    ("random weights", "random_weights"),
    ("precision", "precision"),
    ("batch size", "batch_size"),
    ("fast paths", "fast_paths"),
    ("torch", "torch_version"),
    ("torchvision", "torchvision_version"),
    ("CUDA", "cuda_version"),
    ("Python", "python_version"),
    ("container image", "container_image"),
    ("device", "device_name"),
    ("workload", "workload_id"),
    ("Airflow", "airflow_version"),
    ("Google provider", "google_provider_version"),
    ("Kubernetes provider", "kubernetes_provider_version"),
    ("project", "project_version"),
)
_COUNTS = (
    ("listed", "listed"),
    ("duplicates", "duplicates"),
    ("skipped (not an image)", "skipped_not_image"),
    ("rejected (unusable names or entries)", "rejected"),
    ("skipped (already processed)", "skipped_incremental"),
    ("processed", "processed"),
    ("ok", "ok"),
    ("failed", "failed"),
    ("shards", "shards"),
)
_THROUGHPUT = (
    ("images/s", "images_per_s"),
    ("images/s per GPU", "images_per_s_per_gpu"),
    ("wall time (s)", "wall_s"),
    ("sum of shard wall times (s)", "shard_wall_s"),
    ("model busy (s)", "inference_s"),
    ("model load per shard (s)", "model_load_s"),
    ("batch latency p50 (ms)", "batch_latency_p50_ms"),
    ("batch latency p95 (ms)", "batch_latency_p95_ms"),
    ("machine type", "machine_type"),
    ("GPU type", "gpu_type"),
    ("GPUs per shard", "gpu_count"),
    ("machine hours", "machine_hours"),
    ("GPU hours", "gpu_hours"),
    ("estimated cost (USD)", "estimated_cost_usd"),
    ("cost per 1,000 images (USD)", "cost_per_1000_images_usd"),
)

_ACCURACY = (
    ("box AP, IoU 0.50:0.95", "coco_map"),
    ("AP at IoU 0.50", "coco_map50"),
    ("AP at IoU 0.75", "coco_map75"),
    ("AP small", "coco_map_small"),
    ("AP medium", "coco_map_medium"),
    ("AP large", "coco_map_large"),
    ("recall, 1 detection", "coco_ar1"),
    ("recall, 10 detections", "coco_ar10"),
    ("recall, 100 detections", "coco_ar100"),
)


def build_run_report(run_prefix: str, record: dict, *, sample_images: int = 8) -> str:
    """Write the run's report to layout.report_uri(run_prefix) (any fsspec URI) and return that URI.

    `record` is the run's row (schema.RUNS keys); the charts, error table and gallery come from the shard
    files under `run_prefix`, so the report shows what the pods wrote.
    """
    data = read_run(run_prefix, sample_images=sample_images, shards=record.get("shards"))  # planned only
    # plotly.js once in the output folder, beside the dashboard, shared by every run's report
    shared = run_prefix.rstrip("/").rsplit("/", 1)[0]
    return write_page(layout.report_uri(run_prefix), run_report_page(data, record), plotly_dir=shared)


def render_run_report(data: RunData, record: dict) -> str:
    """The report's HTML for data already read (plotly.js expected beside it)."""
    return run_report_page(data, record).render()


def run_report_page(data: RunData, record: dict) -> Page:
    """The report's page for data already read; no I/O except fetching the gallery's sample images."""
    page = Page(
        f"Run report: {record.get('run_id', '?')}",
        f"{record.get('model_name', '?')} / {record.get('weights_id', '?')}, run date {record.get('run_date', '?')}",
    )
    page.section("summary", "Summary", *_summary_banners(data, record))
    page.section(
        "config",
        "Config and versions",
        key_values((label, record.get(key)) for label, key in _VERSIONS),
        _config(record),
    )
    page.section(
        "counts", "Counts", key_values((label, record.get(key)) for label, key in _COUNTS), _errors(data)
    )
    page.section(
        "throughput",
        "Throughput and cost",
        key_values((label, record.get(key)) for label, key in _THROUGHPUT),
    )
    if any(record.get(key) is not None for _, key in _ACCURACY):  # only runs given ground truth have these
        page.section(
            "accuracy",
            "Accuracy (COCO metrics)",
            key_values((label, record.get(key)) for label, key in _ACCURACY),
        )
    page.section("latency", "Inference latency", *_latency(page, data))
    page.section("timeline", "Shards over time", *_timeline(page, data))
    page.section("classes", "Detections per class", *_classes(page, data))
    page.section("gallery", "Sample images", _gallery(data))
    return page


def _summary_banners(data: RunData, record: dict) -> list[str]:
    parts = []
    if data.images == 0:
        parts.append(banner("No images in this run: nothing was processed.", "warn"))
    elif data.ok == 0:
        parts.append(banner(f"Every image failed: {data.failed:,} of {data.images:,}.", "bad"))
    elif data.failed:
        parts.append(banner(f"{data.failed:,} of {data.images:,} images failed.", "warn"))
    else:
        parts.append(banner(f"All {data.images:,} images processed.", "good"))
    if record.get("random_weights"):
        parts.append(banner("This run used random weights: its detections are meaningless.", "warn"))
    if record.get("rejected"):
        examples = json.loads(record.get("rejected_examples") or "[]")
        parts.append(
            banner(
                f"{record['rejected']:,} input names or entries could not be used and were left out (not a "
                "usable URI, not UTF-8, or a malformed CSV row)"
                + (f", e.g. {', '.join(examples)}." if examples else "."),
                "warn",
            )
        )
    if record.get("processed") is not None and record.get("processed") != data.images:
        parts.append(
            banner(
                f"The run record says {record['processed']:,} images were processed, "
                f"but the results files hold {data.images:,} rows.",
                "bad",
            )
        )
    parts.extend(banner(problem, "bad") for problem in data.problems)
    parts.append(
        key_values(
            [
                ("images in results", data.images),
                ("ok", data.ok),
                ("failed", data.failed),
                ("detections", data.detections),
                ("images/s", record.get("images_per_s")),
                ("cost per 1,000 images (USD)", record.get("cost_per_1000_images_usd")),
            ]
        )
    )
    return parts


def _config(record: dict) -> str:
    raw = record.get("config_json")
    if not raw:
        return empty("No config recorded.")
    try:
        text = json.dumps(json.loads(raw), indent=2, sort_keys=True)
    except (TypeError, ValueError):
        text = str(raw)
    return f"<h3>Config</h3><pre>{esc(text)}</pre>"


def _errors(data: RunData) -> str:
    if not data.errors:
        return empty("No failed images.")
    rows = [
        (
            e.code,
            e.count,
            f"{100 * e.count / data.images:.1f}%",
            e.example_uri,
            e.example_error[:_MAX_ERROR_TEXT] + ("…" if len(e.example_error) > _MAX_ERROR_TEXT else ""),
        )
        for e in data.errors
    ]
    return "<h3>Errors by reason</h3>" + table(
        ("reason", "images", "share", "example image", "example error"), rows
    )


def _latency(page: Page, data: RunData) -> list[str]:
    parts = []
    if len(data.infer_ms):
        parts.append(page.figure(charts.latency_histogram(data.infer_ms), "chart-latency"))
    else:
        parts.append(empty("No successfully processed images: no latency to show."))
    if data.shards:
        rows = [
            (
                s.shard_index,
                s.raw.get("images"),
                s.raw.get("ok"),
                s.raw.get("failed"),
                s.duration_s,
                s.raw.get("images_per_s"),
                s.raw.get("batch_latency_p50_ms"),
                s.raw.get("batch_latency_p95_ms"),
                s.raw.get("batch_latency_max_ms"),
                s.raw.get("device_name") or s.raw.get("device"),
                s.raw.get("hostname"),
            )
            for s in data.shards
        ]
        header = ("shard", "images", "ok", "failed", "duration (s)", "images/s")
        header += ("batch p50 (ms)", "batch p95 (ms)", "batch max (ms)", "device", "host")
        parts.append("<h3>Per shard</h3>" + table(header, rows))
    return parts


def _timeline(page: Page, data: RunData) -> list[str]:
    if not any(s.duration_s is not None for s in data.shards):
        return [empty("No shard metrics: no timeline to show.")]
    return [page.figure(charts.shard_timeline(data.shards), "chart-timeline")]


def _classes(page: Page, data: RunData) -> list[str]:
    if not data.label_counts:
        return [empty("No detections.")]
    return [page.figure(charts.detections_per_class(data.label_counts), "chart-classes")]


def _gallery(data: RunData) -> str:
    if not data.samples:
        return empty("No successfully processed images to show.")
    gallery = build_gallery(data.samples)
    figures = []
    for thumb in gallery.thumbnails:
        labels = ", ".join(f"{label_name(d)} {d['score']:.2f}" for d in thumb.detections) or "no detections"
        figures.append(
            f'<figure><img src="{thumb.data_uri}" alt="{esc(thumb.image_uri)}">'
            f"<figcaption>{esc(thumb.image_uri)}<br>{esc(labels)}</figcaption></figure>"
        )
    parts = [f'<div class="gallery">{"".join(figures)}</div>'] if figures else []
    if gallery.skipped:
        parts.append("<h3>Samples that could not be drawn</h3>" + table(("image", "why"), gallery.skipped))
    return "\n".join(parts)
