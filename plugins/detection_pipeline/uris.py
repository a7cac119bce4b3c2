"""Checks and canonical forms for every address a run names: storage URIs, the warehouse, container images.

Each check returns the canonical form or raises `URIError` with a message that reads after a field name
("input_uri: ..."), so `settings` (environment variables) and `config` (run Params) reject the same values
with the same words. The canonical form matters beyond tidiness: the manifest deduplicates and the
warehouse skips already-processed images by comparing URI strings, so one image must have one spelling.

This module is imported when DAG files are parsed, so it stays pure Python; `uri_columns` applies the same
rules to whole Arrow columns for the manifest.

Canonical storage URIs (`normalize`):

- surrounding whitespace stripped (`WHITESPACE`); unicode and inner spaces kept, nothing percent-decoded;
- the scheme lower-cased, as schemes are case-insensitive (RFC 3986): `GS://b/x` is `gs://b/x`, `HTTP://Host/A`
  is `http://Host/A` (hosts and paths are kept as written);
- `file:///a/b` and `file://localhost/a/b` become the local path `/a/b`;
- runs of `/` collapse and `.` segments vanish in local paths and gs:// keys (`gs://b//x/./y` -> `gs://b/x/y`);
- http(s) URLs are left as they are (their paths and queries are the server's business).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

WHITESPACE = " \t\r\n\x0b\x0c"
# WHITESPACE and the control characters as the inside of a character class that Python's re, RE2 (Arrow
# kernels) and ECMA-262 (JSON-schema patterns) all read alike; their `\s` differ.
_SPACE = "".join(f"\\x{ord(c):02x}" for c in WHITESPACE)
_CONTROL = r"\x00-\x1f\x7f"

# Image files by extension. HEIC/HEIF/AVIF are images the engine does not decode: they are listed all the same,
# so each gets an `unsupported` error row instead of vanishing into skipped_not_image.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "heic", "heif", "avif")
MANIFEST_EXTENSIONS = ("txt", "csv", "parquet")
STATE_DICT_EXTENSIONS = ("pt", "pth", "bin", "ckpt")

# GCS bucket names: 3-222 characters of lowercase letters, digits, '-', '_' and '.', alphanumeric at both ends.
GCS_BUCKET = r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]"
CONTROL_CHARACTERS = re.compile(f"[{_CONTROL}]")
PARENT_SEGMENT = re.compile(r"(^|/)\.\.(/|$)")
_GCS = re.compile(rf"^gs://({GCS_BUCKET})(/.*)?$", re.DOTALL)
SCHEME = r"[A-Za-z][A-Za-z0-9+.-]*"  # RFC 3986; `normalize` lower-cases it
_SCHEME = re.compile(f"^({SCHEME}):")
HTTP_URL = rf"^(?i:https?)://[^/?#{_SPACE}]+"  # RE2-compatible too: uri_columns uses it in Arrow kernels
_HTTP = re.compile(HTTP_URL)
_FILE_SCHEME = re.compile(r"^file://(localhost)?/")

# The end of the string in Python's re and in ECMA-262 alike: Python's `$` also matches before a final newline,
# so "default\n" passed `^...$` patterns (in jsonschema too, which uses re.search) and reached a pod spec.
END = r"(?![\s\S])"

# Container image reference (docker/distribution grammar): [host[:port]/]path[:tag][@algorithm:digest].
_HOST_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_REFERENCE = (
    rf"^(?:{_HOST_COMPONENT}(?:\.{_HOST_COMPONENT})*(?::[0-9]+)?/)?"
    rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$" + END
)
# Kubernetes names and label values (RFC 1123 label): namespaces, GPU accelerator labels, machine types.
DNS_LABEL = r"^[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?$" + END

# Warehouse URIs: this module's `parse_warehouse` is the one parser (`warehouse.open_warehouse` dispatches on
# its result, the run config's Param pattern is built from the same pieces). Project and dataset names are
# checked strictly because they end up inside SQL (`project.dataset.table`), where identifiers cannot be
# parameters. Google's rules: project ids are 6-30 lowercase letters, digits and hyphens, starting with a letter
# and not ending with a hyphen; dataset and table names are letters, digits and underscores.
BIGQUERY_PROJECT = r"[a-z][a-z0-9-]{4,28}[a-z0-9]"
BIGQUERY_DATASET = r"[A-Za-z0-9_]{1,1024}"
BIGQUERY_LOCATION = r"[A-Za-z][A-Za-z0-9-]{1,39}"
_BIGQUERY = re.compile(
    r"^bigquery://(?P<project>[^/?#]*)/(?P<dataset>[^/?#]*)(?:\?location=(?P<location>[^&#]*))?$"
)
_DUCKDB = re.compile(r"^duckdb://(?P<path>/[^?#]*[^/?#]\.duckdb)$")
# The same grammar as a JSON-schema pattern for the Param form (which cannot call a function).
WAREHOUSE_PATTERN = (
    r"^(?:duckdb:///[^?#\u0000-\u001f]*\.duckdb"
    rf"|bigquery://{BIGQUERY_PROJECT}/{BIGQUERY_DATASET}(?:\?location={BIGQUERY_LOCATION})?)$" + END
)
_EXPECTED_WAREHOUSE = (
    "expected duckdb:///absolute/path/file.duckdb or bigquery://project-id/dataset[?location=LOC]"
)

# Date placeholders an input URI may carry, resolved from the run's logical date.
PLACEHOLDERS = {
    "ds": "%Y-%m-%d",
    "ds_nodash": "%Y%m%d",
    "yyyy": "%Y",
    "mm": "%m",
    "dd": "%d",
}
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


class URIError(ValueError):
    """A URI, image reference or name that a run must not use; the message follows a field name."""


# -- storage URIs --------------------------------------------------------------------------------


def normalize(uri: str) -> str:
    """The canonical spelling of a storage URI (rules in the module docstring); checks nothing."""
    uri = uri.strip(WHITESPACE)
    if scheme := _SCHEME.match(uri):
        uri = scheme[1].lower() + uri[scheme.end(1) :]
    if _HTTP.match(uri):
        return uri
    uri = _FILE_SCHEME.sub("/", uri, count=1)
    scheme = "gs://" if uri.startswith("gs://") else ""
    path = uri[len(scheme) :]
    path = re.sub(r"/+", "/", path)
    path = re.sub(r"/(?:\./)+", "/", path)
    path = re.sub(r"/\.$", "", path)
    return scheme + path


def check_storage_uri(uri: str, *, http: bool = False, placeholders: bool = False) -> str:
    """The canonical form of a prefix or object URI: an absolute local path, file://, gs:// (or http(s)).

    Rejects other schemes, relative paths (a worker's or pod's working directory is nobody's business),
    `..` segments (a run reads and writes only where it says), and control characters.
    """
    if not isinstance(uri, str) or not uri.strip(WHITESPACE):
        raise URIError("must be a non-empty URI")
    if CONTROL_CHARACTERS.search(uri.strip(WHITESPACE)):
        raise URIError(f"{uri!r} contains a control character")
    if not placeholders and _PLACEHOLDER.search(uri):
        raise URIError(f"{uri!r} contains a '{{...}}' placeholder, which only input_uri may use")
    canonical = normalize(uri)
    if _HTTP.match(canonical):
        if not http:
            raise URIError(f"{uri!r}: http(s) is allowed only for input_uri; use a local path or gs://")
        return canonical
    scheme = _SCHEME.match(canonical)
    if canonical.startswith("file:"):
        raise URIError(f"{uri!r}: a file URI must be file:///absolute/path")
    if canonical.startswith("gs://"):
        if not _GCS.match(canonical):
            raise URIError(f"{uri!r} is not gs://<bucket>/<key> with a valid bucket name")
    elif scheme and not canonical.startswith("/"):
        allowed = "a local path, file://, gs://" + (" or http(s)://" if http else "")
        raise URIError(f"{uri!r}: scheme {scheme.group(1)!r} is not supported; use {allowed}")
    elif not canonical.startswith("/"):
        raise URIError(f"{uri!r} is a relative path; give an absolute path, file:// or gs:// URI")
    if PARENT_SEGMENT.search(canonical):
        raise URIError(f"{uri!r} contains a '..' segment")
    return canonical


def storage_uri_pattern(*, http: bool = False, extensions: tuple[str, ...] = ()) -> str:
    """A JSON-schema pattern matching every URI `check_storage_uri(..., http=http)` accepts, for the Param form.

    Looser than the check (no '..', bucket or placeholder rules), never stricter: a form that refuses what the
    run accepts is a bug. So it allows surrounding `WHITESPACE` and schemes in any case (spelled `[gG][sS]`:
    ECMA-262 has no inline flags), and refuses control characters inside. With `extensions`, the URI must end
    in one of them in any case, as `extension` reads it, or in what `normalize` removes after it ('/.').
    """

    def any_case(word: str) -> str:
        return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in word)

    schemes = ["/", any_case("file") + "://(?:localhost)?/", any_case("gs") + "://"]
    if http:
        schemes.append(any_case("https") + "?://")
    end = r"\.(?:" + "|".join(map(any_case, extensions)) + r")(?:/+\.)*" if extensions else ""
    return f"^[{_SPACE}]*(?:{'|'.join(schemes)})[^{_CONTROL}]*{end}[{_SPACE}]*$"


def check_http_authority(url: str) -> None:
    """URIError unless an http(s) URL has a host and, when given, a port in range: for a URL the run itself
    reads (its input manifest file), what the client would refuse later, and retry, is refused up front.
    (Manifest entries are not held to it: a bad one is that image's fetch_error row.)"""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing it is the check (out of range, not a number)
    except ValueError as error:
        raise URIError(f"{redact(url)!r} is not a valid URL: {error}") from None
    if not parts.hostname:
        raise URIError(f"{redact(url)!r} has no host")


def as_prefix(uri: str) -> str:
    """A canonical URI without its trailing '/', so prefixes compare and join predictably (root stays '/')."""
    stripped = uri.rstrip("/")
    if not stripped or stripped.endswith(":/"):
        return uri
    return stripped


def is_within(uri: str, prefix: str) -> bool:
    """Whether `uri` is `prefix` or lies under it (both canonical); `gs://b/a` is not within `gs://b/ab`."""
    uri, prefix = as_prefix(uri), as_prefix(prefix)
    return uri == prefix or uri.startswith(prefix.rstrip("/") + "/")


def extension(uri: str) -> str:
    """The lower-case extension of a URI's last path segment ('' when none), query and fragment ignored."""
    path = re.split(r"[?#]", uri, maxsplit=1)[0] if _HTTP.match(uri) else uri
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def redact(uri: str) -> str:
    """The URI with credentials, query and fragment (signed-URL tokens) masked, for records and logs.

    Userinfo runs to the last '@' before the path (a raw '@' in a password is how clients split it)."""
    if not _HTTP.match(uri):
        return uri
    uri = re.sub(r"^(https?://)[^/?#]*@", r"\1***@", uri, flags=re.IGNORECASE)
    return re.sub(r"[?#].*$", lambda rest: rest[0][0] + "***", uri, flags=re.DOTALL)


# -- date placeholders ---------------------------------------------------------------------------


def placeholders(uri: str) -> list[str]:
    """The `{name}` placeholders of a URI, in order; unknown names and unmatched braces raise URIError."""
    names = _PLACEHOLDER.findall(uri)
    unknown = sorted({n for n in names if n not in PLACEHOLDERS})
    if unknown:
        known = ", ".join("{" + n + "}" for n in PLACEHOLDERS)
        raise URIError(f"{uri!r} has unknown placeholder(s) {', '.join(unknown)}; known: {known}")
    if "{" in _PLACEHOLDER.sub("", uri) or "}" in _PLACEHOLDER.sub("", uri):
        raise URIError(f"{uri!r} has an unmatched '{{' or '}}'")
    return names


def resolve_placeholders(uri: str, logical_date: datetime | None) -> str:
    """`uri` with `{ds}`, `{ds_nodash}`, `{yyyy}`, `{mm}`, `{dd}` filled from the logical date (in UTC)."""
    if not placeholders(uri):
        return uri
    if logical_date is None:
        raise URIError(f"{uri!r} has date placeholders but the run has no logical date")
    when = logical_date.astimezone(UTC) if logical_date.tzinfo else logical_date
    return _PLACEHOLDER.sub(lambda m: when.strftime(PLACEHOLDERS[m.group(1)]), uri)


def static_prefix(uri: str) -> str:
    """The part of a URI before its first placeholder: what is known before the logical date is."""
    return uri.split("{", 1)[0]


# -- warehouse -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WarehouseURI:
    """A parsed warehouse URI (the `warehouse.Warehouse` classes are what it opens)."""

    kind: str  # duckdb | bigquery
    path: str | None = None  # duckdb: absolute path of the database file
    project: str | None = None  # bigquery
    dataset: str | None = None  # bigquery
    location: str | None = None  # bigquery, optional


def check_bigquery_names(project: str | None, dataset: str | None, location: str | None = None) -> None:
    """URIError unless the project, dataset and location are names BigQuery accepts (they reach SQL)."""
    if not re.fullmatch(BIGQUERY_PROJECT, project or ""):
        raise URIError(
            f"invalid BigQuery project id {project!r}: 6-30 lowercase letters, digits or hyphens, "
            "starting with a letter"
        )
    if not re.fullmatch(BIGQUERY_DATASET, dataset or ""):
        raise URIError(f"invalid BigQuery dataset {dataset!r}: letters, digits and underscores only")
    if location is not None and not re.fullmatch(BIGQUERY_LOCATION, location):
        raise URIError(f"invalid BigQuery location {location!r}: e.g. US, EU, europe-west4")


def parse_warehouse(uri: str) -> WarehouseURI:
    """`duckdb:///abs/path.duckdb` or `bigquery://<project>/<dataset>[?location=EU]`, checked strictly."""
    if not isinstance(uri, str) or not uri:
        raise URIError(f"invalid warehouse URI {uri!r}: {_EXPECTED_WAREHOUSE}")
    if CONTROL_CHARACTERS.search(uri):
        raise URIError(f"invalid warehouse URI {uri!r}: contains a control character")
    if uri.startswith("duckdb:"):
        match = _DUCKDB.match(uri)
        if not match:
            raise URIError(
                f"invalid DuckDB warehouse URI {uri!r}: expected duckdb:/// followed by an absolute path "
                "ending in .duckdb (three slashes), with no query or fragment"
            )
        if PARENT_SEGMENT.search(match["path"]):
            raise URIError(f"invalid DuckDB warehouse URI {uri!r}: the path contains a '..' segment")
        return WarehouseURI("duckdb", path=match["path"])
    if uri.startswith("bigquery:"):
        match = _BIGQUERY.match(uri)
        if not match:
            raise URIError(f"invalid BigQuery warehouse URI {uri!r}: expected bigquery://project-id/dataset")
        try:
            check_bigquery_names(match["project"], match["dataset"], match["location"])
        except URIError as error:
            raise URIError(f"{error} in {uri!r}: expected bigquery://project-id/dataset") from None
        return WarehouseURI(
            "bigquery", project=match["project"], dataset=match["dataset"], location=match["location"]
        )
    raise URIError(f"unsupported warehouse URI {uri!r}: {_EXPECTED_WAREHOUSE}")


def check_warehouse(uri: str) -> str:
    """`uri` unchanged when `parse_warehouse` accepts it (a check for settings and config fields)."""
    parse_warehouse(uri)
    return uri


# -- names ---------------------------------------------------------------------------------------


def check_image_reference(reference: str) -> str:
    """A container image reference: `[registry[:port]/]path[:tag][@sha256:digest]`."""
    if not isinstance(reference, str) or not re.match(IMAGE_REFERENCE, reference) or len(reference) > 512:
        raise URIError(
            f"{reference!r} is not a container image reference like "
            "'europe-docker.pkg.dev/project/repo/detection-engine:1.0'"
        )
    return reference


def check_dns_label(name: str) -> str:
    """A Kubernetes (RFC 1123) label: lower-case letters, digits and '-', at most 63, alphanumeric at both ends."""
    if not isinstance(name, str) or not re.match(DNS_LABEL, name):
        raise URIError(
            f"{name!r} is not an RFC 1123 label (a-z, 0-9 and '-', at most 63, alphanumeric at both ends)"
        )
    return name
