"""storage: one filesystem per protocol, bounded reads, atomic writes, on local disk and on gs:// (emulator);
and an import that pulls in neither torch nor Pillow, on either side."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from detection_engine import bounded_read, storage
from detection_engine.storage import ReadLimits, ReadRefused, filesystem_for
from tests.gcs_emulator import object_bytes


def write_parquet(table: pa.Table, uri: str) -> None:
    with storage.atomic_local_path(uri) as tmp:
        pq.write_table(table, tmp)


def test_a_write_is_published_whole_and_leaves_nothing_beside_it(tmp_path):
    target = tmp_path / "run" / "manifest.parquet"

    write_parquet(pa.table({"image_uri": ["/a.jpg", "/b.jpg"]}), str(target))

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


def test_write_atomic_replaces_bytes_and_only_sweeps_stale_temporaries_when_asked(tmp_path):
    target = tmp_path / "out" / "comparison.md"
    target.parent.mkdir()
    other = target.parent / ".comparison.md.c0ncurrent.tmp"  # another writer's, still being written
    other.write_bytes(b"half")

    storage.write_atomic(str(target), b"one")
    assert target.read_bytes() == b"one" and other.exists()
    assert target.stat().st_mode & 0o777 == 0o644

    storage.write_atomic(target.as_uri(), b"two", sweep_stale=True)
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["comparison.md"]


def test_gcs_writes_are_one_upload_and_copies_come_back(gcs_emulator, gcs_bucket):
    uri = f"{gcs_bucket}/runs/r1/manifest.parquet"

    write_parquet(pa.table({"image_uri": ["gs://x/a.jpg"]}), uri)

    assert gcs_emulator.ls(f"{gcs_bucket}/runs") == [uri]
    bounds = ReadLimits(max_bytes=1 << 20, timeout_s=30, connect_timeout_s=10, read_timeout_s=10)
    with storage.open_bounded(uri, bounds) as local:
        assert pq.read_table(local).column("image_uri").to_pylist() == ["gs://x/a.jpg"]
    with (
        pytest.raises(ReadRefused, match="not_found"),
        storage.open_bounded(f"{gcs_bucket}/runs/missing.txt", bounds),
    ):
        pass


@pytest.fixture
def gcs_requests(monkeypatch) -> list[tuple[str, str]]:
    """Every HTTP request gcsfs sends from now on, as (method, URL path)."""
    import aiohttp

    sent: list[tuple[str, str]] = []
    request = aiohttp.ClientSession._request

    async def recording(self, method, url, *args, **kwargs):
        sent.append((method, str(url).split("?")[0]))
        return await request(self, method, url, *args, **kwargs)

    monkeypatch.setattr(aiohttp.ClientSession, "_request", recording)
    return sent


@pytest.mark.timeout(120)
def test_a_gcs_object_is_read_with_one_request_and_refused_with_fetch_codes(
    gcs_emulator, gcs_bucket, gcs_requests
):
    photo = object_bytes(3 << 20, seed=1)
    gcs_emulator.put(f"{gcs_bucket}/in/photo.jpg", photo)
    gcs_emulator.put(f"{gcs_bucket}/in/empty.jpg", b"")
    gcs_emulator.put(f"{gcs_bucket}/in/folder/a.jpg", b"x")
    limits = ReadLimits(max_bytes=4 << 20)
    gcs_requests.clear()

    assert storage.read_bytes(f"{gcs_bucket}/in/photo.jpg", limits) == photo
    assert [method for method, _ in gcs_requests] == ["GET"]  # no metadata GET, no list call
    assert b"".join(storage.iter_bytes(f"{gcs_bucket}/in/photo.jpg", limits)) == photo
    for name, code in (
        ("empty.jpg", "empty_file"),
        ("gone.jpg", "not_found"),
        ("folder", "is_directory"),
    ):
        with pytest.raises(ReadRefused) as refused:
            storage.read_bytes(f"{gcs_bucket}/in/{name}", limits)
        assert refused.value.code == code, name
    with pytest.raises(ReadRefused) as refused:
        storage.read_bytes(f"{gcs_bucket}/in/photo.jpg", ReadLimits(max_bytes=1 << 20))
    assert refused.value.code == "too_large"


def test_a_range_on_an_empty_gcs_object_is_an_empty_read_not_an_error():
    """Real GCS answers 416 to a ranged GET of a 0-byte object (the emulator answers 200 with nothing)."""
    from gcsfs.retry import HttpError

    class Unsatisfiable:
        def cat_file(self, path, start=None, end=None):
            raise HttpError({"code": 416, "message": "The requested range cannot be satisfied."})

    assert bounded_read._ranged_get(Unsatisfiable(), "b/empty.jpg", 0, 1 << 20) == b""


@pytest.mark.timeout(120)
def test_a_large_gcs_object_comes_in_bounded_ranges(gcs_emulator, gcs_bucket, gcs_requests, monkeypatch):
    monkeypatch.setattr(bounded_read, "GCS_GET_BYTES", 1 << 20)
    data = object_bytes((2 << 20) + 5, seed=2)
    gcs_emulator.put(f"{gcs_bucket}/list.txt", data)
    exact = object_bytes(1 << 20, seed=3)  # a last range that starts at the end
    gcs_emulator.put(f"{gcs_bucket}/exact.txt", exact)
    gcs_requests.clear()

    chunks = list(storage.iter_bytes(f"{gcs_bucket}/list.txt", ReadLimits(max_bytes=8 << 20)))

    assert b"".join(chunks) == data and max(map(len, chunks)) == 1 << 20 and len(gcs_requests) == 3
    assert storage.read_bytes(f"{gcs_bucket}/exact.txt", ReadLimits(max_bytes=8 << 20)) == exact


def test_gcs_write_atomic_and_glob(gcs_emulator, gcs_bucket):
    storage.write_atomic(f"{gcs_bucket}/p/b.json", b"{}")
    storage.write_atomic(f"{gcs_bucket}/p/a.json", b"[]")
    storage.write_atomic(f"{gcs_bucket}/p/a.json", b"[1]")

    assert storage.glob(f"{gcs_bucket}/p/*.json") == [f"{gcs_bucket}/p/a.json", f"{gcs_bucket}/p/b.json"]
    assert gcs_emulator.get(f"{gcs_bucket}/p/a.json") == b"[1]"
    assert storage.read_bytes(f"{gcs_bucket}/p/a.json") == b"[1]"


def test_reads_refuse_with_fetch_codes(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    assert storage.read_file(str(tmp_path / "empty")) == b""
    with pytest.raises(ReadRefused, match="empty_file"):
        storage.read_bytes(str(tmp_path / "empty"))
    with pytest.raises(ReadRefused, match="fetch_error: ValueError: Protocol not known"):
        storage.read_bytes("nosuchprotocol://bucket/a.jpg")
    with pytest.raises(ReadRefused, match="too_large"):
        (tmp_path / "big").write_bytes(b"x" * 10)
        list(storage.iter_bytes(str(tmp_path / "big"), ReadLimits(max_bytes=5)))


def test_path_of_is_what_the_filesystem_takes(tmp_path):
    assert storage.path_of("gs://bucket/a/b.jpg") == "bucket/a/b.jpg"
    assert storage.path_of(f"file://{tmp_path}/a") == storage.path_of(f"{tmp_path}/a") == f"{tmp_path}/a"
    assert filesystem_for(f"{tmp_path}/a")[1] == f"{tmp_path}/a"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_builds_its_own_filesystems(tmp_path):
    filesystem_for(str(tmp_path))
    assert bounded_read._filesystems
    pid = os.fork()
    if pid == 0:  # child: exit status says whether the parent's clients were dropped
        os._exit(0 if not bounded_read._filesystems else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_gcs_uses_one_anonymous_client_for_the_emulator(gcs_emulator, gcs_bucket):
    fs, path = filesystem_for(f"{gcs_bucket}/a.jpg")
    assert path == f"{gcs_bucket.removeprefix('gs://')}/a.jpg"
    assert fs is filesystem_for("gs://other/b.jpg")[0]
    assert fs.credentials.method == "anon"


# -- what an import costs --------------------------------------------------------------------------

_NO_HEAVY = (
    "import os, sys; before = dict(os.environ); import {modules}; "
    "bad = [m for m in {forbidden!r} if m in sys.modules]; assert not bad, bad; "
    "assert dict(os.environ) == before, set(os.environ) ^ set(before)"
)


def _run(code: str, env: dict | None = None) -> None:
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env=env)


def test_the_module_imports_neither_torch_nor_pillow_nor_airflow_and_leaves_the_environment_alone():
    _run(_NO_HEAVY.format(modules="detection_engine.storage", forbidden=("torch", "PIL", "airflow", "gcsfs")))


def test_the_airflow_side_reaches_storage_without_torch_or_pillow():
    modules = ", ".join(
        f"detection_pipeline.{m}"
        for m in ("manifest", "sharding", "input_sensor", "aggregate", "evaluation", "workload", "preflight")
    )
    _run(_NO_HEAVY.format(modules=modules, forbidden=("torch", "PIL")))


def test_gcsfs_experimental_buckets_are_switched_off_before_the_first_gs_filesystem():
    env = {k: v for k, v in os.environ.items() if k != "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"}
    env["STORAGE_EMULATOR_HOST"] = "http://127.0.0.1:9"  # anonymous: building the client contacts nothing
    code = (
        "import os; from detection_engine import storage; "
        "assert 'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT' not in os.environ; "
        "storage.filesystem_for('gs://bucket/a.jpg'); "
        "assert os.environ['GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT'] == 'false'"
    )
    _run(code, env)
