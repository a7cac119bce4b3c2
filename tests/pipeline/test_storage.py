"""Atomic writes and local copies, on local disk and on gs:// (emulator)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from detection_engine.bounded_read import ReadRefused
from detection_pipeline import storage


def test_a_write_is_published_whole_and_leaves_nothing_beside_it(tmp_path):
    target = tmp_path / "run" / "manifest.parquet"

    storage.write_parquet(pa.table({"image_uri": ["/a.jpg", "/b.jpg"]}), str(target))

    assert pq.read_table(target).column("image_uri").to_pylist() == ["/a.jpg", "/b.jpg"]
    assert [p.name for p in target.parent.iterdir()] == ["manifest.parquet"]
    assert target.stat().st_mode & 0o777 == 0o644


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "manifest.parquet"
    target.write_bytes(b"previous")

    with pytest.raises(RuntimeError, match="interrupted"), storage.atomic_local_path(str(target)) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(b"half of the new")
        raise RuntimeError("interrupted")

    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.parquet"]


def test_gcs_writes_are_one_upload_and_copies_come_back(gcs_emulator, gcs_bucket):
    uri = f"{gcs_bucket}/runs/r1/manifest.parquet"

    storage.write_parquet(pa.table({"image_uri": ["gs://x/a.jpg"]}), uri)

    assert gcs_emulator.ls(f"{gcs_bucket}/runs") == [uri]
    bounds = {"max_bytes": 1 << 20, "timeout_s": 30, "connect_timeout_s": 10, "read_timeout_s": 10}
    with storage.open_bounded(uri, **bounds) as local:
        assert pq.read_table(local).column("image_uri").to_pylist() == ["gs://x/a.jpg"]
    with (
        pytest.raises(ReadRefused, match="not_found"),
        storage.open_bounded(f"{gcs_bucket}/runs/missing.txt", **bounds),
    ):
        pass
