"""`uris`' rules over whole Arrow columns, for manifests of millions of URIs.

Arrow kernels over a column, no Python loop over rows. Most URIs are canonical already, so cheap tests pick
the few rows the expensive rules can change or reject, and only those pay for them. Tests hold
`normalize_array` to `uris.normalize` row for row.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from detection_pipeline.uris import CONTROL_CHARACTERS, HTTP_URL, IMAGE_EXTENSIONS, PARENT_SEGMENT, WHITESPACE

_MAY_CHANGE = r"(^|[^:])//|/\.|^file:"  # a superset of the rows `normalize` changes
_IMAGE = r"\.(" + "|".join(IMAGE_EXTENSIONS) + ")$"


def normalize_array(values: pa.Array) -> pa.Array:
    """`normalize` for a column of strings without nulls; tests hold the two to the same output."""
    trimmed = pc.ascii_trim(values, WHITESPACE)  # WHITESPACE is ASCII, so byte-wise trimming is exact
    may_change = pc.match_substring_regex(trimmed, _MAY_CHANGE)
    if not pc.any(may_change).as_py():
        return trimmed
    return pc.replace_with_mask(trimmed, may_change, _rewrite(trimmed.filter(may_change)))


def _rewrite(values: pa.Array) -> pa.Array:
    local = pc.replace_substring_regex(values, r"^file://(localhost)?/", "/", max_replacements=1)
    is_gs = pc.starts_with(local, "gs://")
    path = pc.if_else(is_gs, pc.utf8_slice_codeunits(local, 5), local)
    path = pc.replace_substring_regex(path, r"/+", "/")
    path = pc.replace_substring_regex(path, r"/(\./)+", "/")
    path = pc.replace_substring_regex(path, r"/\.$", "")
    scheme, nothing = pa.scalar("gs://", path.type), pa.scalar("", path.type)
    canonical = pc.if_else(is_gs, pc.binary_join_element_wise(scheme, path, nothing), path)
    return pc.if_else(pc.match_substring_regex(values, HTTP_URL), values, canonical)


def unusable_array(canonical: pa.Array) -> pa.BooleanArray:
    """True where a canonical object URI is not one `check_storage_uri(..., http=True)` accepts: another
    scheme, a relative path, gs:// without a bucket, a '..' segment, a control character. (The finer rules
    of bucket names are left to the store: a bad one becomes that image's not_found error row.)"""
    gs = pc.and_(pc.starts_with(canonical, "gs://"), pc.invert(pc.starts_with(canonical, "gs:///")))
    local_or_gs = pc.or_(pc.starts_with(canonical, "/"), gs)
    bad = pc.invert(local_or_gs)
    if pc.any(bad).as_py():
        bad = pc.and_(bad, pc.invert(pc.match_substring_regex(canonical, HTTP_URL)))
    if _any_bytes(canonical, lambda b: (b < 0x20) | (b == 0x7F)):
        bad = pc.or_(bad, pc.match_substring_regex(canonical, CONTROL_CHARACTERS.pattern))
    if _any_bytes(canonical, lambda b: (b[:-1] == 0x2E) & (b[1:] == 0x2E)):  # '..' anywhere
        parent = pc.and_(local_or_gs, pc.match_substring_regex(canonical, PARENT_SEGMENT.pattern))
        bad = pc.or_(bad, parent)
    return bad


def image_array(values: pa.Array) -> pa.BooleanArray:
    """True where a URI names an image file by its extension (`IMAGE_EXTENSIONS`, any case)."""
    return pc.match_substring_regex(values, _IMAGE, ignore_case=True)


def _any_bytes(values: pa.Array, test: Callable[[np.ndarray], np.ndarray]) -> bool:
    """Whether `test` holds for any byte of the column's characters: one vectorised pass over the data."""
    offsets_type = np.int64 if pa.types.is_large_string(values.type) else np.int32
    offsets = np.frombuffer(values.buffers()[1], dtype=offsets_type)[
        values.offset : values.offset + len(values) + 1
    ]
    if len(values) == 0 or offsets[-1] == offsets[0]:
        return False
    data = np.frombuffer(values.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    return bool(np.any(test(data)))
