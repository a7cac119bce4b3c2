"""The whole DAG against Cloud Storage over its real JSON API (gcp-storage-emulator): the manifest is listed
from a gs:// prefix, the engine subprocess reads images from and writes its files to the bucket (it inherits
STORAGE_EMULATOR_HOST), and the load reads the shard files from gs:// into the local DuckDB warehouse."""

from __future__ import annotations

import datetime as dt
import io

import duckdb
import pytest
from PIL import Image

from tests.reliability import runs
from tests.reliability.exactly_once import assert_exactly_once, run_files

pytestmark = pytest.mark.slow

DAY = dt.datetime(2026, 3, 6, tzinfo=dt.UTC)


def _png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 120, 40)).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_run_from_and_to_a_bucket_loads_every_image_once(batch_dag, gcs_emulator, gcs_bucket, tmp_path):
    objects = {
        "images/a.png": _png((64, 48)),
        "images/day/b.png": _png((48, 64)),
        "images/broken.jpg": b"\xff\xd8\xff\xe0 not really a jpeg",
        "images/day/_SUCCESS": b"",  # listed, not an image: skipped
    }
    for key, data in objects.items():
        gcs_emulator.put(f"{gcs_bucket}/{key}", data)
    conf = {
        **runs.tiny_conf(tmp_path, f"{gcs_bucket}/images"),
        "output_uri": f"{gcs_bucket}/runs",
    }

    run = runs.run_dag(batch_dag, conf, DAY)

    assert runs.state(run) == "success"
    prefix = runs.run_prefix(conf, run.run_id)
    assert prefix.startswith(f"{gcs_bucket}/runs/")
    assert_exactly_once(conf["warehouse"], run.run_id, unique=3, shards=1, prefix=prefix)
    with duckdb.connect(conf["warehouse"].removeprefix("duckdb://"), read_only=True) as con:
        rows = con.execute(
            "SELECT image_uri, status, width, height, split_part(error, ':', 1) FROM results WHERE run_id = ?"
            " ORDER BY image_uri",
            [run.run_id],
        ).fetchall()
        listed, skipped = con.execute(
            "SELECT listed, skipped_not_image FROM runs WHERE run_id = ?", [run.run_id]
        ).fetchone()
    assert rows == [
        (f"{gcs_bucket}/images/a.png", "ok", 64, 48, None),
        (f"{gcs_bucket}/images/broken.jpg", "error", None, None, "truncated"),
        (f"{gcs_bucket}/images/day/b.png", "ok", 48, 64, None),
    ]
    assert (listed, skipped) == (3, 1)
    files, _ = run_files(prefix)
    assert files == [
        "manifest.parquet",
        "metrics/shard-00000.json",
        "report.html",
        "results/shard-00000.parquet",
        "shards/shard-00000.parquet",
    ]
    assert f"{gcs_bucket}/runs/dashboard.html" in gcs_emulator.ls(f"{gcs_bucket}/runs")
