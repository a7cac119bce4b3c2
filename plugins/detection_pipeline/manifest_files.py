"""An input manifest file's entries: the one reader of .txt, .csv and .parquet manifests.

Whatever bytes the file holds, the answer is batches of raw entries (Arrow string arrays, not yet normalised)
or a ManifestError that says what the file is instead: the first bytes are sniffed before any parser sees
them, so a UTF-16 export, a gzip or zip archive, or a Parquet file named .csv is named as such rather than
surfacing as a decoder's traceback. Within a readable file, damage costs the entry, not the file: an entry
that is not UTF-8 (a Latin-1 name in a UTF-8 list) and a CSV row with the wrong number of fields are
rejected, counted with a few examples, like an unusable URI.

- .txt: UTF-8 (an optional BOM), one entry per line; lines end in \\n, \\r\\n or a lone \\r.
- .csv: the column named `image_uri` or `uri` (trimmed, any case: `URI`, ` Image_URI `), or the only column
  of a file without a header; delimited by ',', ';', tab or '|', whichever splits the header into a URI column.
  Two columns that both match are ambiguous and refused.
- .parquet: the same column names; any text-like type (string, large or view strings, dictionary-encoded
  strings such as pandas categoricals, binary holding UTF-8, all-null).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from detection_pipeline import uris
from detection_pipeline.errors import ManifestError

URI_COLUMNS = ("image_uri", "uri")  # accepted names of the URI column, in order of preference
# Entries per batch handed on: the manifest's column-wise passes work this much at a time.
BATCH_ROWS = 1 << 20
TEXT_BLOCK_BYTES = 64 << 20  # a text manifest is split this much at a time (~1M lines of ~60 characters)
SNIFF_BYTES = 4096
# A CSV row must fit in one block: with pyarrow's default (1 MiB) one long line failed the whole file.
CSV_BLOCK_BYTES = 64 << 20
CSV_DELIMITERS = (",", ";", "\t", "|")

# What a file starting with these bytes is; checked before a parser reads it.
_SIGNATURES = (
    (b"\xff\xfe\x00\x00", "UTF-32 text; save it as UTF-8"),
    (b"\x00\x00\xfe\xff", "UTF-32 text; save it as UTF-8"),
    (b"\xff\xfe", "UTF-16 text; save it as UTF-8"),
    (b"\xfe\xff", "UTF-16 text; save it as UTF-8"),
    (b"\x1f\x8b", "gzip-compressed; decompress it first"),
    (b"PK\x03\x04", "a zip archive; extract the list first"),
    (b"PK\x05\x06", "an (empty) zip archive"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed; decompress it first"),
    (b"\xfd7zXZ\x00", "xz-compressed; decompress it first"),
    (b"BZh", "bzip2-compressed; decompress it first"),
    (b"PAR1", "a Parquet file; give it the .parquet extension"),
    (b"ARROW1", "an Arrow IPC file; write it as Parquet"),
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image, not a list of images"),
    (b"\xff\xd8\xff", "a JPEG image, not a list of images"),
)
_BZIP2 = re.compile(rb"^BZh[1-9]1AY&SY")

Reject = Callable[[list[str], int], None]  # (a few examples, how many) of entries left out


def read_entries(
    handle: BinaryIO, kind: str, input_uri: str, max_bytes: int, reject: Reject
) -> Iterator[pa.Array]:
    """Batches of the raw entries of a seekable manifest file of `kind` (txt, csv or parquet), opened
    within `max_bytes`; `reject` is told of entries left out."""
    shown = uris.redact(input_uri)
    _refuse_other_formats(handle, kind, shown)
    if kind == "parquet":
        return _read_parquet(handle, shown, reject)
    if kind == "csv":
        return slices(_read_csv(handle, shown, reject))
    return _read_text(handle, shown, max_bytes, reject)


def _refuse_other_formats(handle: BinaryIO, kind: str, shown: str) -> None:
    head = handle.read(SNIFF_BYTES)
    handle.seek(0)
    what = _what(head)
    if kind == "parquet":
        if what is not None and not head.startswith(b"PAR1"):
            raise ManifestError(f"input manifest {shown} is not Parquet: it is {what.split(';')[0]}")
        return
    if what is not None:
        raise ManifestError(f"input manifest {shown} is not UTF-8 text: it is {what}")
    if b"\x00" in head:  # never in a URI; UTF-16/32 without a byte-order mark, or binary data
        raise ManifestError(
            f"input manifest {shown} is not UTF-8 text: it holds NUL bytes (UTF-16 or UTF-32 without a "
            "byte-order mark, or binary data)"
        )


def _what(head: bytes) -> str | None:
    for signature, what in _SIGNATURES:
        if head.startswith(signature) and (signature != b"BZh" or _BZIP2.match(head)):
            return what
    return None


def slices(values: pa.Array) -> Iterator[pa.Array]:
    """`values` in batches of BATCH_ROWS."""
    for start in range(0, len(values), BATCH_ROWS):
        yield values.slice(start, BATCH_ROWS)


def _uri_column(names: list[str], shown: str) -> int:
    """The index of the URI column among `names` (trimmed, any case), by URI_COLUMNS' preference."""
    keys = [_key(name) for name in names]
    for wanted in URI_COLUMNS:
        found = [i for i, key in enumerate(keys) if key == wanted]
        if len(found) > 1:
            raise ManifestError(
                f"input manifest {shown} has {len(found)} columns named {wanted!r} "
                f"({', '.join(repr(names[i]) for i in found)}); keep one"
            )
        if found:
            return found[0]
    raise ManifestError(f"input manifest {shown} has no {' or '.join(URI_COLUMNS)} column (columns: {names})")


# -- parquet ---------------------------------------------------------------------------------------


def _read_parquet(handle: BinaryIO, shown: str, reject: Reject) -> Iterator[pa.Array]:
    try:
        file = pq.ParquetFile(handle)
    except (pa.ArrowException, OSError) as err:  # any Arrow error: the file, not the run
        raise ManifestError(f"input manifest {shown} is not readable Parquet: {err}") from None
    schema = file.schema_arrow
    index = _uri_column(schema.names, shown)
    name, kind = schema.names[index], schema.field(index).type
    if not _is_text_like(kind):
        raise ManifestError(f"input manifest {shown}: column {name!r} is {kind}, not text")
    for batch in _batches(file, name, shown):
        values = batch.column(0)
        if pa.types.is_dictionary(values.type):  # pandas categoricals
            values = values.dictionary_decode()
        if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
            yield values  # valid UTF-8: Arrow's Parquet reader checks string columns
        else:
            yield _as_utf8(values.cast(pa.large_binary()), reject)


def _batches(file: pq.ParquetFile, column: str, shown: str) -> Iterator[pa.RecordBatch]:
    """The column's batches; a damaged page (a valid footer over corrupt data) is the file's ManifestError."""
    batches = file.iter_batches(batch_size=BATCH_ROWS, columns=[column])
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as err:
            raise ManifestError(f"input manifest {shown} is not readable Parquet: {err}") from None
        yield batch


def _is_text_like(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        return _is_text_like(kind.value_type)
    return pa.types.is_null(kind) or any(
        check(kind)
        for check in (
            pa.types.is_string,
            pa.types.is_large_string,
            pa.types.is_string_view,
            pa.types.is_binary,
            pa.types.is_large_binary,
            pa.types.is_binary_view,
        )
    )


# -- csv -------------------------------------------------------------------------------------------


def _read_csv(handle: BinaryIO, shown: str, reject: Reject) -> pa.Array:
    """The URI column by header, or the only column of a headerless file; malformed rows are rejected."""
    if not handle.read(1):
        return pa.array([], pa.string())
    handle.seek(0)
    bad_rows: list[str] = []

    def skip(row: pacsv.InvalidRow) -> str:
        bad_rows.append(row.text)
        return "skip"

    parse = pacsv.ParseOptions(delimiter=_delimiter(handle), invalid_row_handler=skip)
    try:
        names = pacsv.open_csv(handle, pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES), parse).schema.names
        handle.seek(0)
        bad_rows.clear()  # the header pass parsed the first block too
        headerless = len(names) == 1 and _key(names[0]) not in URI_COLUMNS
        index = 0 if headerless else _uri_column(names, shown)
        table = pacsv.read_csv(
            handle,
            # Positional names, so a duplicate or odd header cannot make the wrong column be read.
            read_options=pacsv.ReadOptions(
                column_names=[f"c{i}" for i in range(len(names))],
                skip_rows=0 if headerless else 1,
                block_size=CSV_BLOCK_BYTES,
            ),
            parse_options=parse,
            convert_options=pacsv.ConvertOptions(
                include_columns=[f"c{index}"],
                column_types={f"c{index}": pa.binary()},
                strings_can_be_null=False,
            ),
        )
    except UnicodeDecodeError:
        raise ManifestError(f"input manifest {shown} is not UTF-8 text") from None
    except (pa.ArrowException, OSError) as err:
        raise ManifestError(f"input manifest {shown} is not readable CSV: {err}") from None
    if bad_rows:
        reject([row.rstrip("\r\n") for row in bad_rows[:5]], len(bad_rows))
    return _as_utf8(table.column(0).combine_chunks(), reject)


def _delimiter(handle: BinaryIO) -> str:
    """The delimiter whose split of the first line names the URI column: Excel writes ';' where ',' is the
    decimal mark, and tab-separated exports are common. A headerless file is read with ','."""
    first = handle.readline(CSV_BLOCK_BYTES).decode("utf-8", "replace")
    handle.seek(0)
    for delimiter in CSV_DELIMITERS:
        if any(_key(part) in URI_COLUMNS for part in first.split(delimiter)):
            return delimiter
    return ","


def _key(name: str) -> str:
    """A header name as matched against URI_COLUMNS: trimmed (quotes, BOM too), any case."""
    return name.strip(uris.WHITESPACE + '"\ufeff').lower()


# -- text ------------------------------------------------------------------------------------------


def _read_text(handle: BinaryIO, shown: str, max_bytes: int, reject: Reject) -> Iterator[pa.Array]:
    """The lines of a UTF-8 text file, split column-wise (no Python loop over lines), TEXT_BLOCK_BYTES at a
    time, so memory stays flat at any size up to the byte cap the file was opened under. A block ends
    after its last line end (bytes that never occur inside a multi-byte UTF-8 character); the rest starts
    the next block. A \\r\\n cut between blocks leaves one blank line, which is no entry; a line that is
    not UTF-8 is rejected."""
    rest = handle.read(3).removeprefix(b"\xef\xbb\xbf")
    read = len(rest)
    while block := handle.read(TEXT_BLOCK_BYTES):
        read += len(block)
        if read > max_bytes:  # a local file that grew after it was opened
            raise ManifestError(
                f"cannot read input manifest {shown}: too_large: more than {max_bytes:,} bytes "
                "(DETECTION_MAX_MANIFEST_BYTES)"
            )
        data = rest + block
        end = max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
        rest = data[end:]
        if end:
            yield _lines(data[:end], reject)
    if rest:
        yield _lines(rest, reject)


def _lines(data: bytes, reject: Reject) -> pa.Array:
    offsets = pa.py_buffer(np.array([0, len(data)], dtype=np.int64))
    text = pa.Array.from_buffers(pa.large_binary(), 1, [None, offsets, pa.py_buffer(data)])
    if b"\r" in data:  # the literal split is the cheap one; most files end lines in \n alone
        return _as_utf8(pc.split_pattern_regex(text, r"\r\n|\r|\n").flatten(), reject)
    return _as_utf8(pc.split_pattern(text, "\n").flatten(), reject)


def _as_utf8(values: pa.Array, reject: Reject) -> pa.Array:
    """Binary entries as strings; an entry that is not UTF-8 is rejected, not the file. Finding which costs
    a Python pass, paid only when one exists."""
    string = pa.large_string() if pa.types.is_large_binary(values.type) else pa.string()
    try:
        return values.cast(string)
    except pa.ArrowInvalid:
        pass
    utf8 = pa.array([_is_utf8(value) for value in values.to_pylist()])
    bad = values.filter(pc.invert(utf8))
    reject([value.decode("utf-8", "backslashreplace") for value in bad.slice(0, 5).to_pylist()], len(bad))
    return values.filter(utf8).cast(string)


def _is_utf8(value: bytes | None) -> bool:
    try:
        value is None or value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
