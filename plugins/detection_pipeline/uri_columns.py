"""`uris`' rules over whole Arrow columns, for manifests of millions of URIs.

Arrow kernels over a column, no Python loop over rows. Most URIs are canonical already, so cheap tests pick
the few rows the expensive rules can change or reject, and only those pay for them. Tests hold
`normalize_array` to `uris.normalize` row for row.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from detection_pipeline.uris import (
    CONTROL_CHARACTERS,
    HTTP_URL,
    IMAGE_EXTENSIONS,
    PARENT_SEGMENT,
    SCHEME,
    WHITESPACE,
)

# One pass of this regex picks the rows that `normalize` may change or that may be unusable for a reason other
# than their scheme: runs of '/' (but the '//' of gs:// and http(s)://, which stays, see `_canonical`), '.'
# segments (so '..' ones too), file://, control characters, a scheme (`SCHEME`) with an upper-case letter.
_SUSPICIOUS = (
    r"(^|[^:])//|^(?:gs|https?):(?s:.*)://|/\.|^file:"
    rf"|{CONTROL_CHARACTERS.pattern}|^(?:[A-Z]|[a-z][a-z0-9+.-]*[A-Z])[A-Za-z0-9+.-]*:"
)
_SCHEME_AND_REST = rf"^(?P<scheme>(?:{SCHEME}:)?)(?P<rest>(?s:.*))"
_IMAGE = r"\.(" + "|".join(IMAGE_EXTENSIONS) + ")$"
_QUERY = r"([?#][^/]*)?$"  # a URL's query or fragment, which is not part of the name
_ANY_EXTENSION = r"\.[^./?#]{1,16}" + _QUERY
_IMAGE_EXTENSION = r"\.(" + "|".join(IMAGE_EXTENSIONS) + ")" + _QUERY


def canonicalize(values: pa.Array) -> tuple[pa.Array, pa.BooleanArray]:
    """`normalize` applied to a column of strings without nulls, and which of the results are unusable.

    Unusable: what `check_storage_uri(..., http=True)` refuses for an object: another scheme, a relative
    path, gs:// without a bucket, a '..' segment (outside http(s) URLs), a control character. (Finer rules of
    bucket names are left to the store: a bad one becomes that image's not_found error row.)
    """
    trimmed = pc.ascii_trim(values, WHITESPACE) if _has_edge_whitespace(values) else values
    return _canonical(trimmed)


def unusable_listed(values: pa.Array) -> pa.BooleanArray:
    """Which names a store listed cannot be used exactly as they are; they are never rewritten.

    A listed name is the object's identity: trimming or collapsing it would name another object (or none).
    So a name is usable only when it is its own canonical spelling and passes the checks `canonicalize`
    applies: a name with a control character, a '..' or '.' segment or a run of '/' in a gs:// key is
    refused (and counted by the manifest), not altered; whitespace is part of a listed name.
    """
    canonical, unusable = _canonical(values)
    return pc.or_(unusable, pc.not_equal(canonical, values))


def _canonical(trimmed: pa.Array) -> tuple[pa.Array, pa.BooleanArray]:
    http = pc.match_substring_regex(trimmed, HTTP_URL)  # the same rows before and after `_rewrite`
    # `normalize` collapses every run of '/' but the one after gs: or an http(s) URL's scheme: a '://' in any
    # other row is suspicious.
    kept = pc.or_(pc.starts_with(trimmed, "gs://"), http)
    suspicious = pc.or_(
        pc.match_substring_regex(trimmed, _SUSPICIOUS),
        pc.and_(pc.match_substring(trimmed, "://"), pc.invert(kept)),
    )
    if not pc.any(suspicious).as_py():
        return trimmed, pc.invert(pc.or_(_local_or_gcs(trimmed), http))
    rewritten = _rewrite(trimmed.filter(suspicious), http.filter(suspicious))
    canonical = pc.replace_with_mask(trimmed, suspicious, rewritten)
    unusable = pc.invert(pc.or_(_local_or_gcs(canonical), http))
    inside = pc.or_(unusable.filter(suspicious), _refused_inside(rewritten))
    return canonical, pc.replace_with_mask(unusable, suspicious, inside)


def normalize_array(values: pa.Array) -> pa.Array:
    """`normalize` for a column of strings without nulls; tests hold the two to the same output."""
    return canonicalize(values)[0]


def _local_or_gcs(values: pa.Array) -> pa.BooleanArray:
    gcs = pc.and_(pc.starts_with(values, "gs://"), pc.invert(pc.starts_with(values, "gs:///")))
    return pc.or_(pc.starts_with(values, "/"), gcs)


def _refused_inside(canonical: pa.Array) -> pa.BooleanArray:
    """For the suspicious rows: a control character (in any URI), or a '..' segment in a local or gs:// one."""
    parent = pc.and_(_local_or_gcs(canonical), pc.match_substring_regex(canonical, PARENT_SEGMENT.pattern))
    return pc.or_(parent, pc.match_substring_regex(canonical, CONTROL_CHARACTERS.pattern))


def _rewrite(values: pa.Array, http: pa.BooleanArray) -> pa.Array:
    parts = pc.extract_regex(values, _SCHEME_AND_REST)
    nothing = pa.scalar("", values.type)
    values = pc.binary_join_element_wise(pc.ascii_lower(parts.field("scheme")), parts.field("rest"), nothing)
    local = pc.replace_substring_regex(values, r"^file://(localhost)?/", "/", max_replacements=1)
    is_gs = pc.starts_with(local, "gs://")
    path = pc.if_else(is_gs, pc.utf8_slice_codeunits(local, 5), local)
    path = pc.replace_substring_regex(path, r"/+", "/")
    path = pc.replace_substring_regex(path, r"/(\./)+", "/")
    path = pc.replace_substring_regex(path, r"/\.$", "")
    scheme = pa.scalar("gs://", path.type)
    canonical = pc.if_else(is_gs, pc.binary_join_element_wise(scheme, path, nothing), path)
    return pc.if_else(http, values, canonical)


def image_array(values: pa.Array) -> pa.BooleanArray:
    """True where a URI names an image file by its extension (`IMAGE_EXTENSIONS`, any case)."""
    return pc.match_substring_regex(values, _IMAGE, ignore_case=True)


def other_extension_array(values: pa.Array) -> pa.BooleanArray:
    """True where a URI's name has an extension and it is not an image's (`notes.txt`, `scan.pdf`).

    Names without an extension (`gs://b/raw-0001`, `https://cdn/img?id=3`) are not flagged: many images are
    stored or served that way. A URL's query and fragment are not part of the name."""
    other = pc.invert(pc.match_substring_regex(values, _IMAGE_EXTENSION, ignore_case=True))
    if not pc.any(other).as_py():  # the usual case: a list of images, one pass
        return other
    return pc.and_(other, pc.match_substring_regex(values, _ANY_EXTENSION))


def _offsets_and_data(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The column's offsets (this slice's) and its whole character buffer, as numpy views without copies."""
    offsets_type = np.int64 if pa.types.is_large_string(values.type) else np.int32
    offsets = np.frombuffer(values.buffers()[1], dtype=offsets_type)[
        values.offset : values.offset + len(values) + 1
    ]
    return offsets, np.frombuffer(values.buffers()[2] or b"", dtype=np.uint8)


def _has_edge_whitespace(values: pa.Array) -> bool:
    """Whether any value starts or ends with a `WHITESPACE` byte (trimming copies the column; mostly needless)."""
    if len(values) == 0:
        return False
    offsets, data = _offsets_and_data(values)
    starts, ends = offsets[:-1], offsets[1:]
    nonempty = ends > starts
    edges = np.concatenate([data[starts[nonempty]], data[ends[nonempty] - 1]])
    return bool(np.isin(edges, np.frombuffer(WHITESPACE.encode(), dtype=np.uint8)).any())
