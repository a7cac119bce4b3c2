"""URI rules: canonical forms, checks, and the column-wise twin that must agree with them row for row."""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detection_engine.redaction import redact_text
from detection_pipeline import uri_columns, uris
from tests.pipeline.storage_uris import STORAGE_URIS

# Spellings a listing or a hand-written manifest produces, with their canonical form.
CANONICAL = [
    ("/data/images/a.jpg", "/data/images/a.jpg"),
    ("  /data/images/a.jpg\r", "/data/images/a.jpg"),
    ("\t/data//images///a.jpg ", "/data/images/a.jpg"),
    ("/data/./images/././a.jpg", "/data/images/a.jpg"),
    ("/data/images/.", "/data/images"),
    ("/data/images/.hidden/a.jpg", "/data/images/.hidden/a.jpg"),
    ("/data/images/a..b.jpg", "/data/images/a..b.jpg"),
    ("file:///data/images/a.jpg", "/data/images/a.jpg"),
    ("file://localhost/data//a.jpg", "/data/a.jpg"),
    ("FILE:///data/images/a.jpg", "/data/images/a.jpg"),  # schemes are case-insensitive (RFC 3986)
    ("File://localhost/data/a.jpg", "/data/a.jpg"),
    ("file://LOCALHOST/data/a.jpg", "file:/LOCALHOST/data/a.jpg"),  # hosts as written: refused
    ("gs://bucket/images/a.jpg", "gs://bucket/images/a.jpg"),
    ("gs://bucket//images/./a.jpg", "gs://bucket/images/a.jpg"),
    ("GS://bucket/images/a.jpg", "gs://bucket/images/a.jpg"),
    ("Gs://bucket//Images/a.jpg", "gs://bucket/Images/a.jpg"),
    ("gs://bucket/a://b.jpg", "gs://bucket/a:/b.jpg"),
    ("gs:///bucket/a.jpg", "gs:///bucket/a.jpg"),  # no bucket: refused, not guessed
    ("/données/été 2026/ä b.JPG", "/données/été 2026/ä b.JPG"),
    ("gs://bucket/with space/%20kept.png", "gs://bucket/with space/%20kept.png"),
    ("https://example.com//a/./b.jpg?x=1//2", "https://example.com//a/./b.jpg?x=1//2"),
    ("HTTP://Example.com/a.jpg", "http://Example.com/a.jpg"),
    ("hTTpS://Example.com//A.jpg", "https://Example.com//A.jpg"),
    ("http:///a.jpg", "http:/a.jpg"),  # no host: not a URL, refused
    ("http://\u3000/a.jpg", "http://\u3000/a.jpg"),  # re and RE2 read a host alike (their \\s differ)
    ("relative//path.jpg", "relative/path.jpg"),
    ("s3://bucket//a.jpg", "s3:/bucket/a.jpg"),
    ("s3://bucket/a.jpg", "s3:/bucket/a.jpg"),
    ("S3://Bucket/a.jpg", "s3:/Bucket/a.jpg"),
    ("/data/../etc/passwd", "/data/../etc/passwd"),
    ("#comment", "#comment"),
    ("", ""),
]


@pytest.mark.parametrize(("raw", "canonical"), CANONICAL)
def test_normalize(raw, canonical):
    assert uris.normalize(raw) == canonical


def test_the_column_wise_rules_agree_with_normalize_row_for_row():
    raw = [r for r, _ in CANONICAL]

    assert uri_columns.normalize_array(pa.array(raw)).to_pylist() == [uris.normalize(r) for r in raw]


def test_the_column_wise_rules_work_on_slices_and_large_strings():
    raw = pa.array(["x", " /a//b.jpg", "gs://bkt//c.png", "y"], pa.large_string()).slice(1, 2)

    assert uri_columns.normalize_array(raw).to_pylist() == ["/a/b.jpg", "gs://bkt/c.png"]


def _refused(uri: str) -> bool:
    try:
        uris.check_storage_uri(uri, http=True)
    except uris.URIError:
        return True
    return False


def test_unusable_entries_are_the_ones_check_storage_uri_refuses():
    entries = [  # canonical URIs, and whether they are unusable
        ("/data/a.jpg", False),
        ("gs://bucket/a.jpg", False),
        ("https://example.com/a.jpg", False),
        ("https://example.com/a\x01.jpg", True),
        ("https://example.com/../a.jpg", False),  # the server's business
        ("relative/a.jpg", True),
        ("s3:/bucket/a.jpg", True),
        ("/data/../etc/passwd", True),
        ("gs://bucket/../a.jpg", True),
        ("gs:///bucket/a.jpg", True),
        ("/data/a\nb.jpg", True),
        ("/data/a\x7f.jpg", True),
        ("/data/a..b.jpg", False),
        ("#comment", True),
    ]
    canonical = [uri for uri, _ in entries]

    same, unusable = uri_columns.canonicalize(pa.array(canonical))

    assert same.to_pylist() == canonical
    assert unusable.to_pylist() == [_refused(u) for u in canonical] == [bad for _, bad in entries]


@settings(max_examples=150, deadline=None)
@given(raw=st.lists(STORAGE_URIS, min_size=1, max_size=6))
def test_the_column_wise_rules_agree_with_normalize_and_check_storage_uri_on_any_uri(raw):
    """Row for row, on URIs built from the pieces the rules treat specially (gs:// buckets valid and no
    placeholders, as above: those rules are the store's and input_uri's)."""
    canonical, unusable = uri_columns.canonicalize(pa.array(raw))

    assert canonical.to_pylist() == [uris.normalize(r) for r in raw]
    assert unusable.to_pylist() == [_refused(r) for r in raw]


def test_other_extensions_in_manifest_entries():
    names = [
        "/a.JPG",
        "/b.txt",
        "/c",
        "/d.v2/e",
        "https://h/f.png?x=1.txt",
        "https://h/g?id=1",
        "gs://b/h.tar.gz",
    ]

    assert uri_columns.other_extension_array(pa.array(names)).to_pylist() == [
        False,
        True,
        False,
        False,
        False,
        False,
        True,
    ]


def test_image_extensions_are_matched_in_any_case():
    names = [
        "a.jpg",
        "b.JPEG",
        "c.Png",
        "d.webp",
        "e.bmp",
        "f.gif",
        "g.tif",
        "h.TIFF",
        "i.json",
        "jpg",
        "k.jpg.txt",
    ]

    assert uri_columns.image_array(pa.array(names)).to_pylist() == [True] * 8 + [False] * 3


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("s3://b/k", "scheme 's3' is not supported"),
        ("S3://b/k", "scheme 's3' is not supported"),
        ("ftp://host/k", "scheme 'ftp' is not supported"),
        ("data/k", "relative path"),
        ("file://host/data", "file:///absolute/path"),
        ("/a/../b", "'..' segment"),
        ("/a/\x1b[31mred", "control character"),
        ("gs://UPPER/k", "valid bucket name"),
        ("GS://UPPER/k", "valid bucket name"),
        ("FILE://host/data", "file:///absolute/path"),
        ("gs://ab/k", "valid bucket name"),
        ("/a/{ds}", "only input_uri may use"),
        ("https://example.com/x", "http(s) is allowed only for input_uri"),
        ("   ", "non-empty"),
    ],
)
def test_check_storage_uri_refuses(uri, message):
    with pytest.raises(
        uris.URIError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
    ):
        uris.check_storage_uri(uri)


def test_is_within_compares_whole_segments():
    assert uris.is_within("gs://b/images/out", "gs://b/images")
    assert uris.is_within("gs://b/images", "gs://b/images/")
    assert not uris.is_within("gs://b/images-out", "gs://b/images")
    assert uris.is_within("/data/x", "/")


def test_placeholders_resolve_and_reject_unknown_names():
    when = datetime(2026, 1, 2)

    assert uris.resolve_placeholders("gs://b/{yyyy}{mm}{dd}/{ds}", when) == "gs://b/20260102/2026-01-02"
    with pytest.raises(uris.URIError, match="unknown placeholder"):
        uris.resolve_placeholders("gs://b/{hh}", when)
    with pytest.raises(uris.URIError, match="unmatched"):
        uris.resolve_placeholders("gs://b/{ds}}", when)


def test_parse_warehouse():
    assert uris.parse_warehouse("duckdb:///var/w.duckdb") == uris.WarehouseURI("duckdb", path="/var/w.duckdb")
    assert uris.parse_warehouse("bigquery://my-project/detection?location=EU") == uris.WarehouseURI(
        "bigquery", project="my-project", dataset="detection", location="EU"
    )
    for bad in ("bigquery://my-project/detection.results", "bigquery://my_project/d", "duckdb:///w.db"):
        with pytest.raises(uris.URIError):
            uris.parse_warehouse(bad)


def test_redact_masks_userinfo_and_query_only_on_http():
    assert uris.redact("https://u:p@host/a.csv?sig=1") == "https://***@host/a.csv?***"
    assert uris.redact("https://host/a.csv#access=FRAG") == "https://host/a.csv#***"
    assert uris.redact("gs://bucket/a?b.jpg") == "gs://bucket/a?b.jpg"


# What a password, a token or a fragment may hold when written raw into a URL ('@' and ':' included), marked
# with capitals that the host and path below never contain, so finding the mark finds a leak.
_RAW_SECRET = st.builds(
    lambda body: "PW" + body, st.text(st.sampled_from("abc09@:!$&'()*+,;=%~-._"), min_size=1, max_size=12)
)


@given(
    scheme=st.sampled_from(["http", "https", "HTTPS", "ftp", "s3"]),
    user=st.text(st.sampled_from("abc09._-"), max_size=6),
    password=_RAW_SECRET,
    token=_RAW_SECRET,
    where=st.sampled_from(["query", "fragment", "both"]),
)
def test_no_part_of_a_credential_survives_either_redactor(scheme, user, password, token, where):
    tail = {"query": f"?sig={token}", "fragment": f"#access={token}", "both": f"?x=1#t={token}"}[where]
    url = f"{scheme}://{user}:{password}@example.com:8080/p/a.jpg{tail}"
    line = redact_text(f"GET {url} failed: 403 for {url}")
    assert "PW" not in line, line
    if scheme.lower().startswith("http"):
        assert "PW" not in uris.redact(url) and "PW" not in redact_text(uris.redact(url))


_SECRET = st.text(st.characters(codec="ascii", categories=("L", "N")), min_size=3, max_size=12)


@given(
    user=_SECRET, password=_SECRET, token=_SECRET, path=st.from_regex(r"/[a-z0-9/._-]{0,20}", fullmatch=True)
)
def test_a_redacted_uri_keeps_its_mask_when_the_log_line_holding_it_is_redacted(user, password, token, path):
    """Task logs pass through `redaction.redact_text` (the record factory) after `uris.redact`: the masks stay."""
    masked = uris.redact(f"https://{user}:{password}@host:8080{path}?token={token}&a=1")
    line = f"manifest of {masked}: 3 distinct URIs, from {masked}."

    assert masked == f"https://***@host:8080{path}?***"
    assert redact_text(line) == line
