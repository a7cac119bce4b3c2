"""workload_id from real manifests written by manifest.build_manifest, and in the run record."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from detection_engine import schema
from detection_pipeline import workload
from detection_pipeline.aggregate import build_run_record
from detection_pipeline.config import RunConfig
from detection_pipeline.manifest import build_manifest
from tests.pipeline.shard_files import shard_metrics

RUN = "manual__2026-11-21T10:00:00+00:00"


def _images(folder, names, content=b"jpeg bytes"):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(content + name.encode())
    return folder


def _config(tmp_path, input_uri, **overrides) -> RunConfig:
    return RunConfig(
        input_uri=str(input_uri),
        output_uri=str(tmp_path / "out"),
        warehouse=f"duckdb://{tmp_path}/w.duckdb",
        **overrides,
    )


def _manifest(tmp_path, config, name="run") -> str:
    return build_manifest(config, str(tmp_path / "out" / name)).manifest_uri


def _record(config, manifest_uri) -> dict:
    metrics = [shard_metrics(RUN, 0, images=3, failed=0)]
    stats = {"listed": 3, "duplicates": 0, "skipped_not_image": 0, "skipped_incremental": 0}
    return build_run_record(
        config,
        run_id=RUN,
        run_date="2026-11-21",
        logical_date="2026-11-21T10:00:00+00:00",
        run_type="manual",
        manifest_stats=stats | {"manifest_uri": manifest_uri},
        shard_specs=[{"shard_index": 0}],
        metrics=metrics,
        started_at="2026-11-21T09:59:00+00:00",
    )


def test_same_inputs_same_digest_whatever_their_listing_order_or_batching(tmp_path, monkeypatch):
    images = _images(tmp_path / "in", [f"{i:03d}.jpg" for i in range(40)])
    config = _config(tmp_path, images)
    first = workload.inputs_digest(_manifest(tmp_path, config, "a"), with_content=False)
    monkeypatch.setattr(workload, "_BATCH_ROWS", 7)  # other batch boundaries, same column
    assert workload.inputs_digest(_manifest(tmp_path, config, "b"), with_content=False) == first


def test_digest_changes_with_one_more_or_one_renamed_input(tmp_path):
    images = _images(tmp_path / "in", ["a.jpg", "b.jpg"])
    config = _config(tmp_path, images)
    base = workload.inputs_digest(_manifest(tmp_path, config, "1"), with_content=False)
    _images(images, ["c.jpg"])
    more = workload.inputs_digest(_manifest(tmp_path, config, "2"), with_content=False)
    (images / "c.jpg").rename(images / "ab.jpg")  # same bytes overall, other boundaries
    renamed = workload.inputs_digest(_manifest(tmp_path, config, "3"), with_content=False)
    assert len({base, more, renamed}) == 3


def test_content_dedup_digest_covers_the_bytes(tmp_path):
    images = _images(tmp_path / "in", ["a.jpg", "b.jpg"])
    config = _config(tmp_path, images, dedup_mode="content")
    before = workload.inputs_digest(_manifest(tmp_path, config, "1"), with_content=True)
    (images / "a.jpg").write_bytes(b"other bytes")
    after = workload.inputs_digest(_manifest(tmp_path, config, "2"), with_content=True)
    assert before != after


def test_a_manifest_without_the_content_column_is_a_clear_error(tmp_path):
    path = tmp_path / "manifest.parquet"
    pq.write_table(pa.table({"image_uri": ["gs://b/a.jpg"], "shard_index": [0]}), path)
    with pytest.raises(ValueError, match="lacks column.*content_sha1"):
        workload.inputs_digest(str(path), with_content=True)


def test_run_record_carries_a_workload_id_that_ignores_versions_but_not_the_work(tmp_path, monkeypatch):
    images = _images(tmp_path / "in", ["a.jpg", "b.jpg", "c.jpg"])
    config = _config(tmp_path, images, min_size=320)
    uri = _manifest(tmp_path, config)
    record = _record(config, uri)
    assert set(record) == set(schema.column_names(schema.RUNS))
    assert len(record["workload_id"]) == 64
    # another torch version (the shards' metrics say so): the same workload
    newer = build_run_record(
        config,
        run_id=RUN,
        run_date="2026-11-22",
        logical_date="2026-11-22T10:00:00+00:00",
        run_type="manual",
        manifest_stats={"listed": 3, "duplicates": 0, "skipped_not_image": 0, "skipped_incremental": 0}
        | {"manifest_uri": uri},
        shard_specs=[{"shard_index": 0}],
        metrics=[shard_metrics(RUN, 0, images=3, failed=0) | {"torch_version": "9.9.9"}],
        started_at="2026-11-22T09:59:00+00:00",
    )
    assert newer["torch_version"] == "9.9.9"
    assert newer["workload_id"] == record["workload_id"]
    # another size or machine: another workload
    assert _record(_config(tmp_path, images, min_size=480), uri)["workload_id"] != record["workload_id"]
    other_machine = _config(tmp_path, images, min_size=320, machine_type="n1-standard-8")
    assert _record(other_machine, uri)["workload_id"] != record["workload_id"]
    # a fast path changes the speed runs are compared by: another workload, one per switch
    compiled = _record(_config(tmp_path, images, min_size=320, compile=True), uri)["workload_id"]
    nhwc = _record(_config(tmp_path, images, min_size=320, channels_last=True), uri)["workload_id"]
    on_device = _record(_config(tmp_path, images, min_size=320, decode_on_device=True), uri)["workload_id"]
    staged = _record(_config(tmp_path, images, min_size=320, prefetch_to_device=True), uri)["workload_id"]
    assert len({compiled, nhwc, on_device, staged, record["workload_id"]}) == 5
