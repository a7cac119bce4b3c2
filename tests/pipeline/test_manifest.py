"""build_manifest over real files: local folders, .txt/.csv/.parquet manifests, gs:// (emulator), http."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detection_engine import layout
from detection_pipeline import manifest, manifest_files
from detection_pipeline.config import RunConfig
from detection_pipeline.errors import PermanentError
from detection_pipeline.manifest import ManifestError, ManifestStats, build_manifest
from detection_pipeline.settings import load_settings
from detection_pipeline.sharding import plan_shards
from tests.hostile_servers import endless_http_server, fixed_http_server, silent_server


def _config(tmp_path: Path, input_uri: str | Path, **overrides) -> RunConfig:
    values = dict(
        input_uri=str(input_uri),
        output_uri=str(tmp_path / "out"),
        warehouse=f"duckdb://{tmp_path / 'w.duckdb'}",
    )
    values.update(overrides)
    return RunConfig(**values)


def _build(
    config: RunConfig, already_processed=None, bounds: manifest.FileBounds = manifest.DEFAULT_FILE_BOUNDS
) -> tuple[ManifestStats, pa.Table]:
    run_prefix = layout.run_prefix(config.output_uri, "manual__2026-11-21T00:00:00+00:00")
    stats = build_manifest(config, run_prefix, already_processed, bounds)
    return stats, pq.read_table(stats.manifest_uri)


def _write(path: Path, data: bytes | str = b"\xff\xd8not really a jpeg") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _invariant(stats: ManifestStats) -> None:
    assert stats.listed == stats.duplicates + stats.skipped_incremental + stats.unique


# -- a listed prefix -------------------------------------------------------------------------------


def test_a_listed_folder_keeps_image_files_sorted_and_counts_the_rest(tmp_path):
    images = tmp_path / "images"
    kept = [
        _write(images / "2026-11-21" / "cam-2" / "b.JPG"),
        _write(images / "2026-11-21" / "cam-1" / "a.jpeg"),
        _write(images / "a.png"),
        _write(images / "deep" / "er" / "still" / "c.webp"),
        _write(images / "été 2026" / "ä b.TIFF"),
        _write(images / "x.bmp"),
        _write(images / "x.gif"),
        _write(images / "x.tif"),
    ]
    for other in ("meta.json", "_SUCCESS", "notes.txt", "jpg", "archive.jpg.zip"):
        _write(images / "2026-11-21" / other)

    stats, table = _build(_config(tmp_path, images))

    assert table.column("image_uri").to_pylist() == sorted(str(p) for p in kept)
    assert (stats.listed, stats.skipped_not_image, stats.duplicates, stats.unique) == (8, 5, 0, 8)
    assert table.schema.names == ["image_uri", "shard_index"]
    _invariant(stats)


def test_an_empty_folder_makes_an_empty_manifest_and_no_shards(tmp_path):
    (tmp_path / "images").mkdir()
    config = _config(tmp_path, tmp_path / "images")

    stats, table = _build(config)

    assert (stats.listed, stats.unique) == (0, 0)
    assert table.num_rows == 0 and table.schema.names == ["image_uri", "shard_index"]
    run_prefix = str(Path(stats.manifest_uri).parent)
    assert plan_shards(config, run_prefix, stats.manifest_uri) == []
    assert not (Path(run_prefix) / "shards").exists()


@pytest.mark.parametrize("missing", ["no-such-folder", "no-such-list.txt", "no-such.parquet"])
def test_a_missing_input_fails_with_its_name(tmp_path, missing):
    with pytest.raises(ManifestError, match=missing):
        _build(_config(tmp_path, tmp_path / missing))


# -- manifest files --------------------------------------------------------------------------------


def test_a_text_manifest_is_normalised_and_deduplicated(tmp_path):
    a = _write(tmp_path / "images" / "a.jpg")
    text = "\r\n".join(
        [
            "# exported 2026-11-21",
            f"{a}",
            f"  file://{a}  ",  # the same image, spelled differently
            f"{tmp_path}//images/./a.jpg",
            "",
            "gs://bucket/photos/b.png",
            "gs://bucket//photos/b.png",
            "GS://bucket/photos/b.png",  # schemes are case-insensitive
            "gs://bucket/photos/raw-0001",  # no extension: kept, an error row if it does not decode
            "gs://bucket/photos/scan.pdf",  # another extension: counted as not an image
            "https://example.com/c.jpg?size=large",
            "https://example.com/render?id=7",
            "https://example.com/notes.txt?v=2",
        ]
    )
    listing = _write(tmp_path / "lists" / "today.txt", "\ufeff" + text + "\n")

    stats, table = _build(_config(tmp_path, listing))

    assert table.column("image_uri").to_pylist() == [
        str(a),
        "gs://bucket/photos/b.png",
        "gs://bucket/photos/raw-0001",
        "https://example.com/c.jpg?size=large",
        "https://example.com/render?id=7",
    ]
    assert (stats.listed, stats.duplicates, stats.skipped_not_image, stats.unique) == (9, 4, 2, 5)
    _invariant(stats)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        (
            "with-header.csv",
            'id,image_uri,label\n1,"gs://bkt/a,1.jpg",cat\n2,gs://bkt/b.jpg,dog\n3,gs://bkt/b.jpg,dog\n',
        ),
        (
            "uri-header.csv",
            "uri\ngs://bkt/b.jpg\ngs://bkt/a,1.jpg\n".replace("gs://bkt/a,1.jpg", '"gs://bkt/a,1.jpg"'),
        ),
        ("no-header.csv", 'gs://bkt/b.jpg\n"gs://bkt/a,1.jpg"\n'),
    ],
)
def test_csv_manifests(tmp_path, name, text):
    stats, table = _build(_config(tmp_path, _write(tmp_path / name, text)))

    assert table.column("image_uri").to_pylist() == ["gs://bkt/a,1.jpg", "gs://bkt/b.jpg"]
    _invariant(stats)


def test_a_csv_without_a_uri_column_names_the_columns_it_has(tmp_path):
    listing = _write(tmp_path / "list.csv", "path,label\ngs://bkt/a.jpg,cat\n")

    with pytest.raises(ManifestError, match=r"no image_uri or uri column \(columns: \['path', 'label'\]\)"):
        _build(_config(tmp_path, listing))


@pytest.mark.parametrize("column", ["image_uri", "uri"])
def test_parquet_manifests(tmp_path, column):
    path = tmp_path / "list.parquet"
    pq.write_table(
        pa.table({column: ["gs://bkt/z.jpg", None, "gs://bkt/a.jpg", "gs://bkt/z.jpg"], "n": [1, 2, 3, 4]}),
        path,
    )

    stats, table = _build(_config(tmp_path, path))

    assert table.column("image_uri").to_pylist() == ["gs://bkt/a.jpg", "gs://bkt/z.jpg"]
    assert (stats.listed, stats.duplicates) == (3, 1)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (pa.table({"path": ["gs://bkt/a.jpg"]}), "no image_uri or uri column"),
        (pa.table({"image_uri": [1, 2]}), "column 'image_uri' is int64, not text"),
    ],
)
def test_unusable_parquet_manifests(tmp_path, table, message):
    pq.write_table(table, tmp_path / "list.parquet")

    with pytest.raises(ManifestError, match=message):
        _build(_config(tmp_path, tmp_path / "list.parquet"))


def test_unusable_entries_are_rejected_counted_and_named_and_the_rest_kept(tmp_path):
    listing = _write(
        tmp_path / "list.txt",
        "/ok/a.jpg\nrelative/b.jpg\ns3://bkt/c.jpg\n/data/../etc/passwd\n/ok/tab\there.jpg\n"
        "ftp://user:secret@host/d.jpg\n",
    )

    stats, table = _build(_config(tmp_path, listing))

    assert table.column("image_uri").to_pylist() == ["/ok/a.jpg"]
    assert (stats.listed, stats.rejected) == (1, 5)
    assert sorted(stats.rejected_examples) == sorted(
        [
            "'relative/b.jpg'",
            "'s3://bkt/c.jpg'",
            "'/data/../etc/passwd'",
            "'/ok/tab\\there.jpg'",
            "'ftp://host/d.jpg'",
        ]
    )  # credentials never reach the run record


# -- dedup, incremental, determinism -----------------------------------------------------------------


def test_duplicates_across_batches_are_found(tmp_path, monkeypatch):
    monkeypatch.setattr(manifest, "BATCH_ROWS", 3)
    lines = [f"gs://bkt/img-{i % 7:02d}.jpg" for i in range(40)]  # 7 URIs, each in many batches
    listing = _write(tmp_path / "list.txt", "\n".join(lines))

    stats, table = _build(_config(tmp_path, listing))

    assert table.column("image_uri").to_pylist() == [f"gs://bkt/img-{i:02d}.jpg" for i in range(7)]
    assert (stats.listed, stats.duplicates, stats.unique) == (40, 33, 7)


def test_the_same_input_in_another_order_gives_the_same_manifest(tmp_path):
    uris = [f"gs://bkt/{d}/{n}.jpg" for d in ("b", "a", "c") for n in range(50)]
    first = _write(tmp_path / "one.txt", "\n".join(uris))
    second = _write(tmp_path / "two.txt", "\n".join(reversed(uris + uris[:10])))

    _, one = _build(_config(tmp_path, first, shard_size=20))
    _, two = _build(_config(tmp_path, second, shard_size=20, output_uri=str(tmp_path / "out2")))

    assert one.equals(two)
    assert one.column("image_uri").to_pylist() == sorted(uris)


def test_order_is_by_code_point_even_when_all_uris_share_a_non_ascii_prefix(tmp_path):
    uris = [
        "/données/été/ü.jpg",
        "/données/été/z.jpg",
        "/données/été/a b.jpg",
        "/données/été/É.jpg",
        "/données/été/a.jpg",
    ]
    listing = _write(tmp_path / "list.txt", "\n".join(uris + uris[:2]))

    stats, table = _build(_config(tmp_path, listing))

    assert table.column("image_uri").to_pylist() == sorted(uris)
    assert stats.duplicates == 2


def test_a_rebuild_replaces_the_manifest_and_leaves_no_temporary_files(tmp_path):
    listing = _write(tmp_path / "list.txt", "gs://bkt/a.jpg\ngs://bkt/b.jpg\n")
    config = _config(tmp_path, listing)
    stats, _ = _build(config)
    _write(listing, "gs://bkt/c.jpg\n")

    stats, table = _build(config)

    assert table.column("image_uri").to_pylist() == ["gs://bkt/c.jpg"]
    assert sorted(p.name for p in Path(stats.manifest_uri).parent.iterdir()) == ["manifest.parquet"]


def test_incremental_runs_skip_what_was_processed(tmp_path):
    listing = _write(
        tmp_path / "list.txt", "gs://bkt/a.jpg\ngs://bkt/b.jpg\ngs://bkt/b.jpg\ngs://bkt/c.jpg\n"
    )
    processed = pa.array(["gs://bkt//b.jpg", "gs://bkt/z.jpg", None])  # spelled as found in an old warehouse

    stats, table = _build(_config(tmp_path, listing, incremental=True), lambda: processed)

    assert table.column("image_uri").to_pylist() == ["gs://bkt/a.jpg", "gs://bkt/c.jpg"]
    assert (stats.listed, stats.duplicates, stats.skipped_incremental, stats.unique) == (4, 1, 1, 2)
    _invariant(stats)


def test_incremental_accepts_any_collection_and_is_asked_only_when_incremental(tmp_path):
    listing = _write(tmp_path / "list.txt", "gs://bkt/a.jpg\ngs://bkt/b.jpg\n")

    def refuse():
        raise AssertionError("queried the warehouse for a run that is not incremental")

    stats, _ = _build(_config(tmp_path, listing), refuse)
    assert stats.unique == 2
    stats, _ = _build(_config(tmp_path, listing, incremental=True), lambda: {"gs://bkt/a.jpg"})
    assert (stats.skipped_incremental, stats.unique) == (1, 1)
    with pytest.raises(ValueError, match="needs already_processed"):
        _build(_config(tmp_path, listing, incremental=True))


def test_content_dedup_keeps_the_first_uri_of_identical_files(tmp_path):
    images = tmp_path / "images"
    same = b"\x89PNG identical bytes"
    _write(images / "b" / "copy.png", same)
    _write(images / "a" / "original.png", same)
    _write(images / "c" / "other.png", b"\x89PNG other bytes")
    _write(images / "c" / "z.png", same)

    stats, table = _build(_config(tmp_path, images, dedup_mode="content"))

    assert table.column("image_uri").to_pylist() == [
        str(images / "a" / "original.png"),
        str(images / "c" / "other.png"),
    ]
    assert table.column("content_sha1").to_pylist() == [
        hashlib.sha1(same).hexdigest(),
        hashlib.sha1(b"\x89PNG other bytes").hexdigest(),
    ]
    assert (stats.listed, stats.duplicates, stats.unique) == (4, 2, 2)
    _invariant(stats)


def test_content_dedup_keeps_unreadable_inputs_for_their_error_rows(tmp_path):
    a = _write(tmp_path / "images" / "a.jpg", b"same")
    b = _write(tmp_path / "images" / "b.jpg", b"same")
    listing = _write(tmp_path / "list.txt", f"{a}\n{b}\n{tmp_path}/gone-1.jpg\n{tmp_path}/gone-2.jpg\n")

    stats, table = _build(_config(tmp_path, listing, dedup_mode="content"))

    assert table.column("image_uri").to_pylist() == [
        f"{tmp_path}/gone-1.jpg",
        f"{tmp_path}/gone-2.jpg",
        str(a),
    ]
    assert table.column("content_sha1").to_pylist() == [None, None, hashlib.sha1(b"same").hexdigest()]
    assert stats.duplicates == 1


def test_shard_indices_in_the_manifest_are_balanced_and_contiguous(tmp_path):
    listing = _write(tmp_path / "list.txt", "\n".join(f"gs://bkt/{i:03d}.jpg" for i in range(23)))

    _, table = _build(_config(tmp_path, listing, shard_size=5))

    shards = table.column("shard_index").to_pylist()
    assert shards == sorted(shards) and set(shards) == set(range(5))
    assert sorted(shards.count(s) for s in range(5)) == [4, 4, 5, 5, 5]


# -- remote storage --------------------------------------------------------------------------------


def test_a_gcs_prefix_listed_into_a_gcs_manifest(gcs_emulator, gcs_bucket, tmp_path):
    for name in ("in/2026/b.jpg", "in/2026/a.PNG", "in/2026/meta.json", "in/a.jpg", "other/x.jpg"):
        gcs_emulator.put(f"{gcs_bucket}/{name}", b"bytes")
    config = _config(tmp_path, f"{gcs_bucket}/in/", output_uri=f"{gcs_bucket}/runs")
    run_prefix = layout.run_prefix(config.output_uri, "manual__1")

    stats = build_manifest(config, run_prefix)

    assert stats.manifest_uri == f"{gcs_bucket}/runs/manual__1/manifest.parquet"
    table = pq.read_table(pa.BufferReader(gcs_emulator.get(stats.manifest_uri)))
    assert table.column("image_uri").to_pylist() == [
        f"{gcs_bucket}/in/2026/a.PNG",
        f"{gcs_bucket}/in/2026/b.jpg",
        f"{gcs_bucket}/in/a.jpg",
    ]
    assert (stats.listed, stats.skipped_not_image) == (3, 1)
    assert gcs_emulator.ls(f"{gcs_bucket}/runs") == [stats.manifest_uri]


def test_a_manifest_file_on_gcs(gcs_emulator, gcs_bucket, tmp_path):
    gcs_emulator.put(
        f"{gcs_bucket}/lists/today.txt", b"gs://photos/b.jpg\ngs://photos/a.jpg\ngs://photos//a.jpg\n"
    )

    stats, table = _build(_config(tmp_path, f"{gcs_bucket}/lists/today.txt"))

    assert table.column("image_uri").to_pylist() == ["gs://photos/a.jpg", "gs://photos/b.jpg"]
    assert stats.duplicates == 1


@pytest.fixture
def http_folder(tmp_path) -> Iterator[tuple[Path, str]]:
    """A real HTTP server over a folder: (folder, base URL)."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_manifest_file_over_http(tmp_path, http_folder):
    folder, base = http_folder
    _write(folder / "today.csv", "image_uri\nhttps://cdn.example/b.jpg\nhttps://cdn.example/a.jpg\n")

    stats, table = _build(_config(tmp_path, f"{base}/today.csv"))

    assert table.column("image_uri").to_pylist() == ["https://cdn.example/a.jpg", "https://cdn.example/b.jpg"]
    assert stats.unique == 2


# -- bounded reads of the manifest file --------------------------------------------------------------
# Each runs under a timeout: a manifest read that blocks fails the test instead of hanging the suite.


def _refused(config: RunConfig, bounds: manifest.FileBounds | None = None) -> str:
    """The permanent error a manifest file that cannot be read within bounds fails the build with."""
    run_prefix = layout.run_prefix(config.output_uri, "manual__2026-11-21T00:00:00+00:00")
    with pytest.raises(ManifestError) as caught:
        build_manifest(config, run_prefix, bounds=bounds or manifest.DEFAULT_FILE_BOUNDS)
    assert isinstance(caught.value, PermanentError)
    assert not Path(layout.manifest_uri(run_prefix)).exists()
    return str(caught.value)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", ["list.txt", "list.csv", "list.parquet"])
def test_a_fifo_as_the_manifest_is_refused_not_waited_on(tmp_path, name):
    fifo = tmp_path / name
    os.mkfifo(fifo)  # no writer: an unbounded open would block forever

    assert "not_a_regular_file: a named pipe (FIFO)" in _refused(_config(tmp_path, fifo))


@pytest.mark.timeout(30)
def test_a_device_as_the_manifest_is_refused(tmp_path):
    (tmp_path / "dev").mkdir()
    link = tmp_path / "dev" / "zero.txt"
    link.symlink_to("/dev/zero")  # endless bytes: an unbounded read fills memory

    assert "not_a_regular_file: a character device" in _refused(_config(tmp_path, link))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", ["list.txt", "list.csv", "list.parquet"])
def test_a_manifest_over_the_byte_cap_is_refused_before_it_is_read(tmp_path, name):
    path = _write(tmp_path / name, "/images/a.jpg\n" * 200)

    message = _refused(_config(tmp_path, path), manifest.FileBounds(max_bytes=1024))

    assert "too_large: 2,800 bytes, limit 1,024" in message and "DETECTION_MAX_MANIFEST_BYTES" in message


@pytest.mark.timeout(30)
def test_a_manifest_at_the_byte_cap_is_read(tmp_path):
    path = _write(tmp_path / "list.txt", "/images/a.jpg\n" * 100)

    stats, _ = _build(_config(tmp_path, path), bounds=manifest.FileBounds(max_bytes=1400))

    assert (stats.listed, stats.unique) == (100, 1)


@pytest.mark.timeout(30)
def test_a_silent_server_as_the_manifest_costs_the_read_timeout(tmp_path):
    with silent_server() as url:
        config = _config(tmp_path, f"{url}/list.txt?token=SECRET", connect_timeout_s=1, read_timeout_s=1)
        message = _refused(config)

    assert "timeout" in message and "SECRET" not in message


@pytest.mark.timeout(30)
def test_a_silent_server_is_bounded_by_the_manifest_deadline(tmp_path):
    with silent_server() as url:
        message = _refused(_config(tmp_path, f"{url}/list.csv"), manifest.FileBounds(timeout_s=1))

    assert "timeout" in message


@pytest.mark.timeout(30)
def test_an_endless_body_as_the_manifest_is_cut_off_at_the_cap(tmp_path):
    with endless_http_server(b"https://cdn.example/a.jpg\n" * 1000) as url:
        message = _refused(_config(tmp_path, f"{url}/list.txt"), manifest.FileBounds(max_bytes=1 << 20))

    assert "too_large: more than 1,048,576 bytes" in message


@pytest.mark.timeout(30)
def test_an_endless_body_under_a_high_cap_ends_at_the_manifest_deadline(tmp_path):
    with endless_http_server(b"https://cdn.example/a.jpg\n" * 1000) as url:
        message = _refused(
            _config(tmp_path, f"{url}/list.txt"), manifest.FileBounds(max_bytes=1 << 40, timeout_s=2)
        )

    assert "timeout" in message


@pytest.mark.timeout(30)
def test_a_missing_manifest_over_http_says_it_does_not_exist(tmp_path, http_folder):
    _, base = http_folder

    message = _refused(_config(tmp_path, f"{base}/gone.txt?sig=SECRET"))

    assert "does not exist" in message and "SECRET" not in message


def test_the_deployment_sets_the_bounds():
    bounds = manifest.FileBounds.from_deployment(
        load_settings(
            {"DETECTION_MAX_MANIFEST_BYTES": "4096", "DETECTION_MANIFEST_TIMEOUT_S": "7"}
        ).for_tasks()
    )

    assert bounds == manifest.FileBounds(max_bytes=4096, timeout_s=7)
    assert manifest.FileBounds.from_deployment(load_settings({}).for_tasks()) == manifest.FileBounds()


# -- any text as a manifest file -------------------------------------------------------------------

_names = st.text(alphabet="ab-_é", min_size=1, max_size=3)
_pad = st.sampled_from(["", " ", "\t", " \t "])


@st.composite
def _manifest_lines(draw) -> tuple[str, str]:
    """One line of a text manifest and what it is: image, not_image, unusable, comment or blank."""
    kind = draw(st.sampled_from(["image", "image", "not_image", "unusable", "comment", "blank"]))
    name = draw(_names)
    body = {
        "image": f"gs://b/{name}.jpg",
        "not_image": f"gs://b/{name}.txt",
        "unusable": draw(st.sampled_from([f"rel/{name}.jpg", f"gs://b/{name}\x01.jpg", f"/x/../{name}.png"])),
        "comment": f"# {name}.jpg",
        "blank": "",
    }[kind]
    return kind, draw(_pad) + body + draw(_pad)


def _line_hit(lines: list[str], newline: str, at: int) -> int | None:
    """Which line a byte inserted at offset `at` of `newline.join(lines)` joins; None when it lands inside
    a two-byte line end and so makes a line of its own."""
    start = 0
    for index, line in enumerate(lines):
        end = start + len(line.encode())
        if start <= at <= end:
            return index
        if at < end + len(newline):
            return None
        start = end + len(newline)
    return len(lines) - 1


@pytest.mark.timeout(300)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(_manifest_lines(), max_size=12),
    st.sampled_from(["\n", "\r\n", "\r"]),
    st.one_of(st.none(), st.integers(min_value=0)),
    st.sampled_from([1, 5, manifest_files.TEXT_BLOCK_BYTES]),
    st.booleans(),
)
def test_every_line_of_a_text_manifest_is_an_entry_a_count_or_a_rejection(
    lines, newline, broken_at, block_bytes, bom
):
    """Blank lines and comments are ignored, other extensions counted, images listed; an unusable entry, or a
    line with a byte that is not UTF-8, is rejected and counted; nothing ever raises. Lines end in \\n,
    \\r\\n or \\r; the file is read a block at a time: lines (and characters) across block ends count once."""
    bom_bytes = b"\xef\xbb\xbf" if bom else b""
    data = newline.join(line for _, line in lines).encode()
    kinds = [kind for kind, _ in lines]
    rejected = kinds.count("unusable")
    if broken_at is not None:  # one byte that is never UTF-8, anywhere in the file (BOM included)
        at = broken_at % (len(bom_bytes) + len(data) + 1)
        whole = bom_bytes + data
        data, bom_bytes = whole[:at] + b"\xff" + whole[at:], b""
        # A byte inside the BOM breaks it: its bytes then start the first line.
        hit = _line_hit([line for _, line in lines], newline, max(0, at - 3 * bom)) if lines else None
        if hit is None:
            rejected += 1  # a line of its own
        else:
            rejected += kinds[hit] != "unusable"
            kinds[hit], lines[hit] = "hit", ("hit", "")
    images = {line.strip() for kind, line in lines if kind == "image"}
    with (
        tempfile.TemporaryDirectory() as folder,
        mock.patch.object(manifest_files, "TEXT_BLOCK_BYTES", block_bytes),
    ):
        config = _config(Path(folder), _write(Path(folder) / "list.txt", bom_bytes + data))
        stats, table = _build(config)

    assert (stats.listed, stats.skipped_not_image) == (kinds.count("image"), kinds.count("not_image"))
    assert stats.rejected == rejected and len(stats.rejected_examples) == min(rejected, 5)
    assert table.column("image_uri").to_pylist() == sorted(images)
    _invariant(stats)


@pytest.mark.timeout(30)
def test_a_store_that_fails_to_serve_the_manifest_is_retried_not_permanent(tmp_path):
    with fixed_http_server(503, b"busy") as url:
        config = _config(tmp_path, f"{url}/list.txt?token=SECRET")
        with pytest.raises(manifest.ManifestUnavailable, match="fetch_error: HTTP 503") as caught:
            _build(config)

    assert not isinstance(caught.value, PermanentError) and "SECRET" not in str(caught.value)


@pytest.mark.timeout(120)
def test_content_dedup_reads_gcs_objects_through_the_same_client_as_the_engine(
    gcs_emulator, gcs_bucket, tmp_path
):
    for name, data in (("a.jpg", b"same"), ("b.jpg", b"same"), ("c.jpg", b"other")):
        gcs_emulator.put(f"{gcs_bucket}/in/{name}", data)

    stats, table = _build(_config(tmp_path, f"{gcs_bucket}/in/", dedup_mode="content"))

    assert table.column("image_uri").to_pylist() == [f"{gcs_bucket}/in/a.jpg", f"{gcs_bucket}/in/c.jpg"]
    assert table.column("content_sha1").to_pylist() == [
        hashlib.sha1(d).hexdigest() for d in (b"same", b"other")
    ]
    assert stats.duplicates == 1
