"""The GCS emulator fixture does what the gs:// tests rely on: real gcsfs reads, writes, listings and moves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from urllib.parse import quote

import gcsfs
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.gcs_emulator import GcsEmulator

ROOT = Path(__file__).resolve().parents[1]


def test_environment_points_gcsfs_at_the_emulator(gcs_emulator):
    assert os.environ["STORAGE_EMULATOR_HOST"] == gcs_emulator.endpoint
    assert os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] == "false"
    assert type(gcsfs.GCSFileSystem(token="anon", skip_instance_cache=True)) is gcsfs.core.GCSFileSystem


def test_buckets_are_fresh_and_distinct(gcs_emulator):
    first, second = gcs_emulator.create_bucket(), gcs_emulator.create_bucket()
    assert first != second
    assert gcs_emulator.ls(first) == [] == gcs_emulator.ls(second)


def test_write_read_and_list_through_plain_gcsfs(gcs_emulator, gcs_bucket):
    fs = gcsfs.GCSFileSystem(token="anon")  # what production code builds, configured only by the environment
    bucket = gcs_bucket.removeprefix("gs://")
    fs.pipe_file(f"{bucket}/a/ünï code.jpg", b"one")
    with fs.open(f"{bucket}/a/b/two.txt", "wb") as f:
        f.write(b"two")
    pq.write_table(pa.table({"image_uri": ["x"]}), f"{bucket}/m.parquet", filesystem=fs)

    assert gcs_emulator.get(f"{gcs_bucket}/a/ünï code.jpg") == b"one"
    assert fs.cat_file(f"{bucket}/a/b/two.txt") == b"two"
    assert sorted(fs.ls(f"{bucket}/a", detail=False)) == [f"{bucket}/a/b", f"{bucket}/a/ünï code.jpg"]
    assert fs.glob(f"{bucket}/a/*.jpg") == [f"{bucket}/a/ünï code.jpg"]
    assert pq.read_table(f"{bucket}/m.parquet", filesystem=fs).column("image_uri").to_pylist() == ["x"]
    assert gcs_emulator.ls(gcs_bucket) == [
        f"{gcs_bucket}/a/b/two.txt",
        f"{gcs_bucket}/a/ünï code.jpg",
        f"{gcs_bucket}/m.parquet",
    ]


def test_move_is_served(gcs_emulator, gcs_bucket):
    """gcsfs's mv calls objects.moveTo; the stock emulator answers 501, which gcsfs retries for ~30 s."""
    bucket = gcs_bucket.removeprefix("gs://")
    gcs_emulator.put(f"{gcs_bucket}/tmp/part ü.parquet", b"data")
    url = f"{gcs_emulator.endpoint}/storage/v1/b/{bucket}/o/{quote('tmp/part ü.parquet', safe='')}/moveTo/o/{quote('final.parquet', safe='')}"
    with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=10) as response:
        assert json.loads(response.read())["name"] == "final.parquet"
    assert gcs_emulator.ls(gcs_bucket) == [f"{gcs_bucket}/final.parquet"]

    gcsfs.GCSFileSystem(token="anon").mv(f"{bucket}/final.parquet", f"{bucket}/results/final.parquet")
    assert gcs_emulator.ls(gcs_bucket) == [f"{gcs_bucket}/results/final.parquet"]


def test_subprocesses_reach_the_emulator(gcs_emulator, gcs_bucket):
    gcs_emulator.put(f"{gcs_bucket}/image.jpg", b"12345")
    script = f"from detection_engine.fetch import fetch_bytes; print(len(fetch_bytes({f'{gcs_bucket}/image.jpg'!r})))"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "inference_image")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "5"), done.stderr


def test_own_emulator_starts_resets_and_stops():
    with GcsEmulator.start() as emulator:
        bucket = emulator.create_bucket()
        emulator.put(f"{bucket}/a.jpg", b"x")
        emulator.reset()
        with pytest.raises(FileNotFoundError):
            emulator.get(f"{bucket}/a.jpg")
        endpoint = emulator.endpoint
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{endpoint}/", timeout=2)
