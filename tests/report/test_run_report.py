from __future__ import annotations

import json
import re
from pathlib import Path

import fsspec
import pytest

from detection_engine import layout
from detection_pipeline.report import ReportError, build_run_report
from tests.report.conftest import EVIL, RUN_ID, detection, png, result_row, run_record, write_shard

PLOTLY_BUNDLE = re.compile(r"plotly\.js v\d+\.\d+\.\d+")


def _read(uri: str) -> str:
    return Path(uri).read_text(encoding="utf-8")


def _figure_data(html: str, div_id: str) -> list[dict]:
    """The trace list plotly will draw into div_id (the JSON argument of Plotly.newPlot)."""
    match = re.search(r'Plotly\.newPlot\(\s*"' + re.escape(div_id) + r'",\s*(\[.*?\]),\s*\{', html, re.S)
    assert match, f"no figure {div_id}"
    return json.loads(match.group(1))


def test_report_is_written_where_layout_says_and_needs_no_network(mixed_run):
    prefix, record = mixed_run
    uri = build_run_report(prefix, record)
    assert uri == layout.report_uri(prefix)
    html = _read(uri)
    assert len(html.encode()) < 500_000, "plotly.js is shared, not inlined"
    assert "window.PlotlyConfig" not in html and not PLOTLY_BUNDLE.search(html)
    (src,) = re.findall(r'<script[^>]+src="([^"]+)"', html)
    shared = Path(uri).parent / src  # one copy in the output folder, beside the dashboard
    assert shared.resolve().parent == Path(prefix).parent.resolve() and PLOTLY_BUNDLE.search(
        shared.read_text()
    )
    assert not re.search(r"<link[^>]+href=", html), "no external stylesheets"
    assert not re.search(r'<img[^>]+src="(?!data:)', html), "images must be data: URIs"


def test_reports_share_one_plotly_copy_written_once(mixed_run):
    prefix, record = mixed_run
    build_run_report(prefix, record)
    (shared,) = Path(prefix).parent.glob("plotly-*.min.js")
    before = shared.stat().st_mtime_ns
    build_run_report(prefix, record)
    assert list(Path(prefix).parent.glob("plotly-*.min.js")) == [shared]
    assert shared.stat().st_mtime_ns == before
    assert not list(Path(prefix).parent.glob(".*.tmp"))


def test_report_has_every_section_and_chart(mixed_run):
    html = _read(build_run_report(*mixed_run))
    for section in ("summary", "config", "counts", "throughput", "latency", "timeline", "classes", "gallery"):
        assert f'<section id="{section}">' in html
    for chart in ("chart-latency", "chart-timeline", "chart-classes"):
        assert f'id="{chart}"' in html


def test_counts_errors_throughput_and_versions_are_shown(mixed_run):
    html = _read(build_run_report(*mixed_run))
    counts = html[html.index('<section id="counts">') : html.index('<section id="throughput">')]
    assert "<th>listed</th><td>7</td>" in counts
    assert "<th>duplicates</th><td>1</td>" in counts
    assert "<th>ok</th><td>4</td>" in counts
    assert "<th>failed</th><td>2</td>" in counts
    assert "<td>decode_error</td>" in counts and "<td>fetch_error</td>" in counts
    throughput = html[html.index('<section id="throughput">') : html.index('<section id="latency">')]
    assert "<td>12.35</td>" in throughput  # images/s
    assert "<td>2.05</td>" in throughput  # cost per 1,000 images
    config = html[html.index('<section id="config">') : html.index('<section id="counts">')]
    assert "<td>2.14.1</td>" in config and "<td>0.29.1</td>" in config
    assert "&quot;batch_size&quot;: 8" in config
    assert "All 4" not in html and "2 of 6 images failed" in html


def test_a_cpu_runs_cost_of_a_fraction_of_a_cent_is_shown_not_rounded_to_zero(mixed_run):
    prefix, record = mixed_run
    cpu = record | {"machine_type": "local", "estimated_cost_usd": 0.000744, "cost_per_1000_images_usd": 0.0}
    throughput = _read(build_run_report(prefix, cpu)).split('<section id="throughput">')[1]
    assert "<th>estimated cost (USD)</th><td>0.00074</td>" in throughput
    assert "<th>cost per 1,000 images (USD)</th><td>0.00</td>" in throughput  # zero stays zero


def test_charts_carry_the_runs_numbers(mixed_run):
    html = _read(build_run_report(*mixed_run))
    classes = _figure_data(html, "chart-classes")[0]
    assert dict(zip(classes["y"], classes["x"], strict=True)) == {"person": 2, "dog": 1, "id 91": 1}
    latency = _figure_data(html, "chart-latency")[0]
    assert sum(latency["y"]) == 4  # the four ok images' infer_ms
    timeline = _figure_data(html, "chart-timeline")
    bars = {y: x for trace in timeline for y, x in zip(trace["y"], trace["x"], strict=True)}
    assert bars == {"shard 0": 10_000, "shard 1": 15_000}  # durations in ms on the date axis


def test_user_text_is_escaped_everywhere(mixed_run):
    html = _read(build_run_report(*mixed_run))
    assert EVIL not in html
    assert '&lt;script&gt;alert("x")&lt;/script&gt;' in html  # the error and its URI (pandas escapes < > &)
    assert '<i>"x"' not in html
    assert "b&lt;i&gt;&quot;x&quot;.png" in html  # the gallery caption of a hostile file name


def test_gallery_shows_ok_images_with_detections_first(mixed_run):
    html = _read(build_run_report(*mixed_run, sample_images=3))
    gallery = html[html.index('<section id="gallery">') :]
    assert gallery.count('<img src="data:image/jpeg;base64,') == 3
    assert "a.png" in gallery and "d.png" in gallery and "b&lt;i&gt;" in gallery
    assert "c.png" not in gallery  # the ok image without detections loses to those with


def test_gallery_falls_back_to_images_without_detections(mixed_run):
    html = _read(build_run_report(*mixed_run, sample_images=8))
    gallery = html[html.index('<section id="gallery">') :]
    assert gallery.count("<img ") == 4 and "c.png" in gallery and "no detections" in gallery


def test_empty_run_says_no_images_and_draws_no_chart(tmp_path):
    prefix = str(tmp_path / "out" / "empty")
    record = run_record(listed=0, duplicates=0, processed=0, ok=0, failed=0, shards=0, images_per_s=None)
    html = _read(build_run_report(prefix, record))
    assert "No images in this run" in html
    assert "Plotly.newPlot" not in html and "<script" not in html
    assert "No successfully processed images to show." in html
    assert "No shard metrics: no timeline to show." in html
    assert "<th>images/s</th><td>\u2014</td>" in html


def test_all_failed_run_shows_errors_and_no_gallery(tmp_path):
    prefix = str(tmp_path / "out" / "failed")
    rows = [result_row(f"/in/{i}.jpg", status="error", error=f"fetch_error: not found {i}") for i in range(3)]
    rows.append(result_row("/in/x.jpg", status="error", error="decode_error: truncated"))
    write_shard(prefix, 0, rows)
    html = _read(build_run_report(prefix, run_record(processed=4, ok=0, failed=4, shards=1)))
    assert "Every image failed: 4 of 4." in html
    assert "<td>fetch_error</td><td>3</td><td>75.0%</td>" in html
    assert "<td>decode_error</td><td>1</td>" in html
    assert "<img " not in html and "No successfully processed images to show." in html
    assert 'id="chart-latency"' not in html and 'id="chart-classes"' not in html
    assert 'id="chart-timeline"' in html  # the shard ran; its timing is still worth seeing


def test_record_and_files_that_disagree_are_flagged(mixed_run):
    prefix, record = mixed_run
    html = _read(build_run_report(prefix, {**record, "processed": 9}))
    assert "The run record says 9 images were processed, but the results files hold 6 rows." in html


def test_random_weights_are_flagged(mixed_run):
    prefix, record = mixed_run
    html = _read(build_run_report(prefix, {**record, "random_weights": True}))
    assert "random weights" in html


def test_rejected_inputs_are_flagged_with_their_examples_escaped(mixed_run):
    prefix, record = mixed_run
    examples = json.dumps(["'relative/a.jpg'", f"'/in/{EVIL}.jpg'"])
    html = _read(build_run_report(prefix, {**record, "rejected": 12, "rejected_examples": examples}))
    assert "12 input names or entries could not be used and were left out" in html
    assert "&#x27;relative/a.jpg&#x27;" in html and EVIL not in html


def test_a_missing_metrics_file_is_reported(mixed_run):
    prefix, record = mixed_run
    Path(layout.shard_metrics_uri(prefix, 1)).unlink()
    html = _read(build_run_report(prefix, record))
    assert "shard-00001: results file without metrics file" in html


def test_an_unreadable_results_file_names_the_file(mixed_run):
    prefix, record = mixed_run
    Path(layout.shard_results_uri(prefix, 1)).write_bytes(b"not parquet")
    with pytest.raises(ReportError, match="shard-00001.parquet"):
        build_run_report(prefix, record)


def test_report_reads_and_writes_gcs(gcs_bucket, tmp_path):
    """The same code on gs:// (the real emulator through gcsfs): shard files and image in, report out."""
    image = png(tmp_path / "a.png", (64, 48))
    gs_image = f"{gcs_bucket}/in/a.png"
    with fsspec.open(gs_image, "wb") as f:
        f.write(Path(image).read_bytes())
    prefix = layout.run_prefix(f"{gcs_bucket}/out", RUN_ID)
    write_shard(
        prefix, 0, [result_row(gs_image, detections=[detection(1, "person", 0.9, [1.0, 1.0, 9.0, 9.0])])]
    )
    uri = build_run_report(prefix, run_record(processed=1, ok=1, failed=0, shards=1))
    assert uri == layout.report_uri(prefix) and uri.startswith(f"{gcs_bucket}/out/")
    with fsspec.open(uri, "r", encoding="utf-8") as f:
        html = f.read()
    assert "All 1 images processed." in html and html.count("data:image/jpeg;base64,") == 1
