"""Shard planning: counts and caps, balanced contiguous assignment, shard manifests on disk and on gs://."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from detection_engine import layout
from detection_pipeline import sharding
from detection_pipeline.config import RunConfig
from detection_pipeline.manifest import build_manifest, manifest_schema
from detection_pipeline.sharding import ShardingError, plan_shards, shard_count, shard_indices


def _config(tmp_path, **overrides) -> RunConfig:
    values = dict(input_uri="/in/list.txt", output_uri=str(tmp_path / "out"), warehouse="duckdb:///w.duckdb")
    values.update(overrides)
    return RunConfig(**values)


def _write_manifest(path, uris: list[str], shard_index: list[int]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table(
            [pa.array(uris), pa.array(shard_index, pa.int64())],
            schema=manifest_schema(["image_uri", "shard_index"]),
        ),
        path,
    )
    return str(path)


@pytest.mark.parametrize(
    ("images", "shard_size", "max_shards", "expected"),
    [(0, 10, 8, 0), (1, 10, 8, 1), (10, 10, 8, 1), (11, 10, 8, 2), (1000, 10, 8, 8), (5, 1, 1024, 5)],
)
def test_shard_count(tmp_path, images, shard_size, max_shards, expected):
    config = _config(tmp_path, shard_size=shard_size, max_shards=max_shards)

    assert shard_count(images, config) == expected


def test_airflows_max_map_length_caps_the_shard_count(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW__CORE__MAX_MAP_LENGTH", "3")

    assert sharding.max_map_length() == 3
    assert shard_count(100, _config(tmp_path, shard_size=10, max_shards=50)) == 3


@pytest.mark.parametrize(("images", "shards"), [(1, 1), (7, 3), (1000, 7), (9_000_000, 900), (10, 10)])
def test_assignment_is_contiguous_and_balanced(images, shards):
    index = shard_indices(0, images, images, shards)

    assert index[0] == 0 and index[-1] == shards - 1
    assert np.all(np.diff(index) >= 0) and np.all(np.diff(index) <= 1)
    sizes = np.bincount(index, minlength=shards)
    assert sizes.max() - sizes.min() <= 1


def test_assignment_by_parts_equals_assignment_at_once():
    whole = shard_indices(0, 1000, 1000, 7)

    parts = np.concatenate([shard_indices(s, min(s + 64, 1000), 1000, 7) for s in range(0, 1000, 64)])

    assert np.array_equal(whole, parts)


def test_plan_shards_writes_one_manifest_per_shard(tmp_path):
    listing = tmp_path / "in" / "list.txt"
    listing.parent.mkdir()
    uris = [f"gs://bkt/img-{i:03d}.jpg" for i in range(23)]
    listing.write_text("\n".join(reversed(uris)))
    config = _config(tmp_path, input_uri=str(listing), shard_size=5)
    run_prefix = layout.run_prefix(config.output_uri, "scheduled__2026-11-21T00:00:00+00:00")
    stats = build_manifest(config, run_prefix)

    specs = plan_shards(config, run_prefix, stats.manifest_uri)

    assert [s["shard_index"] for s in specs] == [0, 1, 2, 3, 4]
    assert [s["images"] for s in specs] == [5, 5, 4, 5, 4]
    assert [s["manifest_uri"] for s in specs] == [layout.shard_manifest_uri(run_prefix, i) for i in range(5)]
    shard_tables = [pq.read_table(s["manifest_uri"]) for s in specs]
    assert all(t.schema.names == ["image_uri"] for t in shard_tables)
    assert [u for t in shard_tables for u in t.column("image_uri").to_pylist()] == uris
    assert {p.name for p in (tmp_path / "out").rglob("*") if p.is_file()} == {
        "manifest.parquet",
        *(f"shard-{i:05d}.parquet" for i in range(5)),
    }


def test_a_replanned_run_removes_the_shards_it_no_longer_has(tmp_path):
    run_prefix = str(tmp_path / "run")
    config = _config(tmp_path, shard_size=2)
    uris = [f"/img/{i}.jpg" for i in range(6)]
    plan_shards(config, run_prefix, _write_manifest(tmp_path / "m.parquet", uris, [0, 0, 1, 1, 2, 2]))

    specs = plan_shards(config, run_prefix, _write_manifest(tmp_path / "m.parquet", uris[:3], [0, 0, 1]))

    assert len(specs) == 2
    assert sorted(p.name for p in (tmp_path / "run" / "shards").iterdir()) == [
        "shard-00000.parquet",
        "shard-00001.parquet",
    ]


@pytest.mark.parametrize(
    "shard_index",
    [[1, 1, 2], [0, 2, 2], [0, 1, 0], [0, 0, -1]],
    ids=["not-from-zero", "gap", "decreasing", "negative"],
)
def test_a_manifest_whose_shards_are_not_contiguous_is_refused(tmp_path, shard_index):
    path = _write_manifest(tmp_path / "m.parquet", ["/a.jpg", "/b.jpg", "/c.jpg"], shard_index)

    with pytest.raises(ShardingError, match="must start at 0 and rise by 0 or 1"):
        plan_shards(_config(tmp_path), str(tmp_path / "run"), path)


def test_a_manifest_with_more_shards_than_the_run_allows_is_refused(tmp_path):
    path = _write_manifest(tmp_path / "m.parquet", ["/a.jpg", "/b.jpg", "/c.jpg"], [0, 1, 2])

    with pytest.raises(ShardingError, match="has 3 shards; this run allows at most 2"):
        plan_shards(_config(tmp_path, max_shards=2), str(tmp_path / "run"), path)


def test_shard_manifests_on_gcs_are_read_by_the_engine(gcs_emulator, gcs_bucket, tmp_path):
    from detection_engine.fetch import read_shard_manifest

    uris = [f"{gcs_bucket}/img/{i}.jpg" for i in range(5)]
    for uri in uris:
        gcs_emulator.put(uri, b"bytes")
    config = _config(tmp_path, input_uri=f"{gcs_bucket}/img", output_uri=f"{gcs_bucket}/runs", shard_size=2)
    run_prefix = layout.run_prefix(config.output_uri, "manual__1")
    stats = build_manifest(config, run_prefix)

    specs = plan_shards(config, run_prefix, stats.manifest_uri)

    assert [s["images"] for s in specs] == [2, 2, 1]
    assert [read_shard_manifest(s["manifest_uri"]) for s in specs] == [uris[:2], uris[2:4], uris[4:]]
    assert gcs_emulator.ls(f"{gcs_bucket}/runs/manual__1/shards") == [s["manifest_uri"] for s in specs]
