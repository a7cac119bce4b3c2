"""Manifest files whatever their bytes: entries, counted rejections, or a ManifestError saying what the file is.

Through `build_manifest`, so what is asserted is what a run gets: its manifest and its stats.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tempfile
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detection_pipeline import manifest_files
from detection_pipeline.manifest import ManifestError
from tests.pipeline.test_manifest import _build, _config, _invariant, _write

LIST = "gs://bkt/a.jpg\ngs://bkt/b.jpg\n"


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _zip(data: bytes) -> bytes:
    sink = io.BytesIO()
    with zipfile.ZipFile(sink, "w") as archive:
        archive.writestr("list.txt", data)
    return sink.getvalue()


OTHER_FORMATS = [
    ("utf-16", LIST.encode("utf-16"), "UTF-16 text"),
    ("utf-16-be", "\ufeff".encode("utf-16-be") + LIST.encode("utf-16-be"), "UTF-16 text"),
    ("utf-16 without BOM", LIST.encode("utf-16-le"), "NUL bytes"),
    ("utf-32", LIST.encode("utf-32"), "UTF-32 text"),
    ("gzip", gzip.compress(LIST.encode()), "gzip-compressed"),
    ("zip", _zip(LIST.encode()), "a zip archive"),
    ("bzip2", bz2.compress(LIST.encode()), "bzip2-compressed"),
    ("xz", lzma.compress(LIST.encode()), "xz-compressed"),
    ("parquet", _parquet_bytes(pa.table({"image_uri": ["gs://bkt/a.jpg"]})), "a Parquet file"),
    ("png", b"\x89PNG\r\n\x1a\n" + bytes(64), "a PNG image"),
]


@pytest.mark.parametrize("name", ["list.txt", "list.csv"])
@pytest.mark.parametrize(("label", "data", "what"), OTHER_FORMATS, ids=[f[0] for f in OTHER_FORMATS])
def test_a_text_manifest_in_another_format_is_named_for_what_it_is(tmp_path, name, label, data, what):
    with pytest.raises(ManifestError, match=f"is not UTF-8 text: it (is|holds) {what}"):
        _build(_config(tmp_path, _write(tmp_path / name, data)))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (gzip.compress(b"PAR1"), "is not Parquet: it is gzip-compressed"),
        (LIST.encode("utf-16"), "is not Parquet: it is UTF-16 text"),
        (LIST.encode(), "is not readable Parquet"),
    ],
)
def test_a_parquet_manifest_that_is_not_parquet_says_so(tmp_path, data, message):
    with pytest.raises(ManifestError, match=message):
        _build(_config(tmp_path, _write(tmp_path / "list.parquet", data)))


def test_a_parquet_file_with_a_damaged_page_under_a_valid_footer_is_named(tmp_path):
    path = tmp_path / "list.parquet"
    uris = [f"gs://bkt/{i:04d}.jpg" for i in range(200)]
    pq.write_table(pa.table({"image_uri": uris}), path, compression="snappy", use_dictionary=False)
    data = bytearray(path.read_bytes())
    data[60:400] = bytes(b ^ 0x5A for b in data[60:400])  # the first data page; the footer stays intact
    path.write_bytes(bytes(data))

    with pytest.raises(ManifestError, match="is not readable Parquet"):
        _build(_config(tmp_path, path))


_signatures = st.sampled_from([b""] + [signature for signature, _ in manifest_files._SIGNATURES])


@pytest.mark.timeout(300)
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["txt", "csv", "parquet"]),
    _signatures,
    st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)),
)
def test_any_bytes_as_a_manifest_file_give_a_manifest_or_a_manifest_error(kind, signature, body):
    """Never a decoder's exception (retried as if transient), never a hang: a manifest or a clear error."""
    with tempfile.TemporaryDirectory() as folder:
        config = _config(Path(folder), _write(Path(folder) / f"list.{kind}", signature + body))
        try:
            stats, _ = _build(config)
        except ManifestError as error:
            assert "input manifest" in str(error)
        else:
            _invariant(stats)


# -- the URI column --------------------------------------------------------------------------------

_header = st.builds(
    lambda name, upper, left, right: (
        left + "".join(c.upper() if u else c for c, u in zip(name, upper, strict=False)) + right
    ),
    st.sampled_from(manifest_files.URI_COLUMNS),
    st.lists(st.booleans(), min_size=9, max_size=9),
    st.sampled_from(["", " ", "  ", "\t"]),
    st.sampled_from(["", " ", "\t"]),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_header, st.booleans(), st.booleans())
def test_the_uri_column_is_found_by_its_name_in_any_case_and_padding(header, first, parquet):
    columns = {"label": ["cat", "dog"], header: ["gs://bkt/b.jpg", "gs://bkt/a.jpg"]}
    if not first:
        columns = dict(reversed(list(columns.items())))
    with tempfile.TemporaryDirectory() as folder:
        if parquet:
            path = Path(folder) / "list.parquet"
            pq.write_table(pa.table(columns), path)
        else:
            names = list(columns)
            rows = [",".join(names)] + [",".join(values) for values in zip(*columns.values(), strict=True)]
            path = _write(Path(folder) / "list.csv", "\n".join(rows) + "\n")
        stats, table = _build(_config(Path(folder), path))

    assert table.column("image_uri").to_pylist() == ["gs://bkt/a.jpg", "gs://bkt/b.jpg"]
    assert stats.rejected == 0


@pytest.mark.parametrize("parquet", [False, True])
@pytest.mark.parametrize("names", [["image_uri", "image_uri"], ["URI", "uri"], ["image_uri", " Image_URI "]])
def test_two_columns_that_both_name_the_uris_are_refused_as_ambiguous(tmp_path, parquet, names):
    if parquet:
        path = tmp_path / "list.parquet"
        pq.write_table(
            pa.Table.from_arrays([pa.array(["gs://bkt/a.jpg"]), pa.array(["gs://bkt/b.jpg"])], names), path
        )
    else:
        path = _write(tmp_path / "list.csv", ",".join(names) + "\ngs://bkt/a.jpg,gs://bkt/b.jpg\n")

    with pytest.raises(ManifestError, match="has 2 columns named .*; keep one"):
        _build(_config(tmp_path, path))


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_a_csv_delimited_otherwise_is_read_by_the_delimiter_its_header_shows(tmp_path, delimiter):
    rows = ["label", "image_uri"], ["cat", "gs://bkt/b,1.jpg"], ["dog", "gs://bkt/a.jpg"]
    path = _write(tmp_path / "list.csv", "".join(delimiter.join(row) + "\n" for row in rows))

    stats, table = _build(_config(tmp_path, path))

    assert table.column("image_uri").to_pylist() == ["gs://bkt/a.jpg", "gs://bkt/b,1.jpg"]
    assert (stats.rejected, stats.skipped_not_image) == (0, 0)


def test_one_very_long_csv_line_costs_no_other_entry(tmp_path):
    long = "/d/" + "x" * (2 << 20) + ".jpg"
    path = _write(tmp_path / "list.csv", f"image_uri\n{long}\n/d/ok.jpg\n")

    stats, table = _build(_config(tmp_path, path))

    assert table.column("image_uri").to_pylist() == ["/d/ok.jpg", long]  # sorted by code point


def test_image_uri_is_preferred_to_uri(tmp_path):
    path = _write(tmp_path / "list.csv", "uri,image_uri\ngs://bkt/not-this.jpg,gs://bkt/this.jpg\n")

    _, table = _build(_config(tmp_path, path))

    assert table.column("image_uri").to_pylist() == ["gs://bkt/this.jpg"]


@pytest.mark.parametrize(
    "column",
    [
        pa.array(["gs://bkt/b.jpg", "gs://bkt/a.jpg", None]).dictionary_encode(),  # a pandas categorical
        pa.array([b"gs://bkt/b.jpg", b"gs://bkt/a.jpg", None], pa.binary()),
        pa.array([b"gs://bkt/b.jpg", b"gs://bkt/a.jpg", None], pa.large_binary()),
        pa.array(["gs://bkt/b.jpg", "gs://bkt/a.jpg", None], pa.large_string()),
        pa.array(["gs://bkt/b.jpg", "gs://bkt/a.jpg", None], pa.string_view()),
    ],
    ids=lambda column: str(column.type),
)
def test_a_parquet_uri_column_of_any_text_like_type_is_read(tmp_path, column):
    path = tmp_path / "list.parquet"
    pq.write_table(pa.table({"image_uri": column}), path)

    stats, table = _build(_config(tmp_path, path))

    assert table.column("image_uri").to_pylist() == ["gs://bkt/a.jpg", "gs://bkt/b.jpg"]
    assert stats.rejected == 0


def test_an_all_null_parquet_column_is_no_entries(tmp_path):
    path = tmp_path / "list.parquet"
    pq.write_table(pa.table({"image_uri": pa.nulls(3)}), path)

    stats, _ = _build(_config(tmp_path, path))

    assert (stats.listed, stats.unique, stats.rejected) == (0, 0, 0)


# -- damage costs the entry, not the file ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["txt", "csv", "parquet"])
def test_an_entry_that_is_not_utf8_is_rejected_and_the_rest_kept(tmp_path, kind):
    entries = [b"gs://bkt/a.jpg", b"gs://bkt/caf\xe9.jpg", b"gs://bkt/b.jpg"]  # a Latin-1 name
    if kind == "parquet":
        path = tmp_path / "list.parquet"
        pq.write_table(pa.table({"image_uri": pa.array(entries, pa.binary())}), path)
    else:
        path = _write(
            tmp_path / f"list.{kind}", (b"image_uri\n" if kind == "csv" else b"") + b"\n".join(entries)
        )

    stats, table = _build(_config(tmp_path, path))

    assert table.column("image_uri").to_pylist() == ["gs://bkt/a.jpg", "gs://bkt/b.jpg"]
    assert stats.rejected == 1 and stats.rejected_examples == ("'gs://bkt/caf\\\\xe9.jpg'",)
    _invariant(stats)


def test_a_csv_row_with_the_wrong_number_of_fields_is_rejected_and_the_rest_kept(tmp_path):
    path = _write(
        tmp_path / "list.csv",
        "image_uri,label\ngs://bkt/a.jpg,cat\ngs://bkt/b.jpg,dog,extra\ngs://bkt/c.jpg\ngs://bkt/d.jpg,cow\n",
    )

    stats, table = _build(_config(tmp_path, path))

    assert table.column("image_uri").to_pylist() == ["gs://bkt/a.jpg", "gs://bkt/d.jpg"]
    assert stats.rejected == 2
    assert sorted(stats.rejected_examples) == ["'gs://bkt/b.jpg,dog,extra'", "'gs://bkt/c.jpg'"]
