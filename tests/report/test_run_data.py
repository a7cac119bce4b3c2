from __future__ import annotations

from pathlib import Path

from detection_engine import layout
from detection_pipeline.report.run_data import read_run
from tests.report.conftest import detection, result_row, write_shard


def test_counts_errors_and_classes_are_summed_over_shards(mixed_run):
    prefix, _ = mixed_run
    data = read_run(prefix)
    assert (data.results_files, data.images, data.ok, data.failed, data.detections) == (2, 6, 4, 2, 4)
    assert [(e.code, e.count) for e in data.errors] == [("decode_error", 1), ("fetch_error", 1)]
    assert data.label_counts == {"person": 2, "dog": 1, "id 91": 1}
    assert sorted(data.infer_ms.tolist()) == [30.0, 35.0, 40.0, 45.0]
    assert [s.shard_index for s in data.shards] == [0, 1]
    assert [s.duration_s for s in data.shards] == [10.0, 15.0]
    assert data.problems == []


def test_error_reasons_are_grouped_by_code_with_a_first_example(tmp_path: Path):
    prefix = str(tmp_path / "run")
    write_shard(prefix, 0, [result_row("/a", status="error", error="fetch_error: 404 on /a")])
    write_shard(
        prefix,
        1,
        [
            result_row("/b", shard_index=1, status="error", error="fetch_error: 403 on /b"),
            result_row("/c", shard_index=1, status="error", error="no separator here"),
            result_row("/d", shard_index=1, status="error", error=None),
        ],
    )
    errors = {e.code: e for e in read_run(prefix).errors}
    assert errors["fetch_error"].count == 2
    assert (errors["fetch_error"].example_uri, errors["fetch_error"].example_error) == (
        "/a",
        "fetch_error: 404 on /a",
    )
    assert errors["no separator here"].count == 1
    assert errors["unknown"].count == 1


def test_samples_prefer_detections_and_spread_over_shards(tmp_path: Path):
    prefix = str(tmp_path / "run")
    person = [detection(1, "person", 0.9, [0.0, 0.0, 5.0, 5.0])]
    for shard in range(3):
        rows = [result_row(f"/s{shard}/plain{i}", shard_index=shard) for i in range(5)]
        rows += [result_row(f"/s{shard}/det{i}", shard_index=shard, detections=person) for i in range(5)]
        write_shard(prefix, shard, rows)
    samples = read_run(prefix, sample_images=4).samples
    uris = [s.image_uri for s in samples]
    assert all("/det" in u for u in uris)
    assert {u.split("/")[1] for u in uris} == {"s0", "s1", "s2"}  # round-robin, not all from shard 0
    assert uris[0] == "/s0/det0" and uris[1] == "/s1/det0"


def test_a_prefix_without_files_is_an_empty_run(tmp_path: Path):
    data = read_run(str(tmp_path / "nothing-here"))
    assert (data.results_files, data.images, data.samples, data.shards, len(data.infer_ms)) == (
        0,
        0,
        [],
        [],
        0,
    )


def test_metrics_without_results_are_reported(mixed_run):
    prefix, _ = mixed_run
    Path(layout.shard_results_uri(prefix, 0)).unlink()
    assert read_run(prefix).problems == ["shard-00000: metrics file without results file"]
