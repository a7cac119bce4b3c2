"""fetch_bytes and read_shard_manifest against real local files, a real HTTP server and the GCS emulator."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.spec import AbstractFileSystem

from detection_engine.decode import ImageError, decode_image
from detection_engine.fetch import ShardManifestError, fetch_bytes, read_shard_manifest
from detection_engine.storage import filesystem_for
from tests.bad_inputs import by_name, has_case, write_corpus

pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def _reason(uri: str) -> str:
    with pytest.raises(ImageError) as caught:
        fetch_bytes(uri)
    return caught.value.reason


def _outcome(uri: str) -> tuple:
    """What the engine records for a URI: ("ok", (w, h)) or ("error", code)."""
    try:
        pixels = decode_image(fetch_bytes(uri))
    except ImageError as exc:
        return ("error", exc.code)
    return ("ok", (pixels.shape[1], pixels.shape[0]))


# -- local files ---------------------------------------------------------------------------------


def test_every_corpus_case_fetches_and_decodes_to_its_expected_outcome(corpus):
    assert {case.name: _outcome(case.uri) for case in corpus} == {case.name: case.expected for case in corpus}


def test_local_path_and_file_uri_give_the_same_bytes(corpus):
    case = by_name(corpus)["jpeg"]
    assert fetch_bytes(str(case.path)) == fetch_bytes(f"file://{case.path}") == case.path.read_bytes()


def test_spaces_and_unicode_in_local_names(corpus):
    case = by_name(corpus)["unicode_name"]
    assert " " in case.uri and "名前" in case.uri
    assert fetch_bytes(case.uri) == fetch_bytes(f"file://{case.uri}") == case.path.read_bytes()


def test_local_failures_have_their_reasons(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.jpg").write_bytes(b"x")
    assert _reason(str(tmp_path / "nope.jpg")) == "not_found: no such file or object"
    assert _reason(str(tmp_path / "no_dir" / "nope.jpg")).startswith("not_found:")
    assert _reason(str(tmp_path / "file.jpg" / "inside.jpg")).startswith("not_found:")
    assert _reason(str(tmp_path / "folder")).startswith("is_directory:")
    assert _reason(f"file://{tmp_path / 'folder'}").startswith("is_directory:")
    assert _reason(str(tmp_path / "empty.jpg")) == "empty_file: 0 bytes"


def test_unreadable_local_file_is_permission_denied(corpus):
    """As a normal user the corpus makes a chmod 000 file; as root (which reads any file) a symlink to a
    write-only /sys attribute, which the kernel refuses even to root."""
    if not has_case(corpus, "unreadable"):
        pytest.skip("no way to make an unreadable file here (root without /sys)")
    assert _reason(by_name(corpus)["unreadable"].uri) == "permission_denied: Permission denied"


def test_unknown_protocol_is_a_fetch_error():
    assert _reason("nosuchprotocol://bucket/a.jpg").startswith("fetch_error: ValueError: Protocol not known")


class _FailingFileSystem(AbstractFileSystem):
    """Raises whatever exception the path names: error mapping for failures this machine cannot produce."""

    protocol = "failing-test"
    errors = {
        "denied": PermissionError(13, "Permission denied"),
        "timeout": TimeoutError("read timed out after 30 s, token=ya29.secret"),
        "forbidden": OSError("Forbidden: bucket/a.jpg\nCaller does not have storage.objects.get access"),
    }

    def cat_file(self, path, start=None, end=None, **kwargs):
        raise self.errors[path.rsplit("/", 1)[-1]]

    def _open(self, path, mode="rb", **kwargs):
        raise self.errors[path.rsplit("/", 1)[-1]]


@pytest.fixture
def failing_protocol():
    fsspec.register_implementation(_FailingFileSystem.protocol, _FailingFileSystem, clobber=True)
    return _FailingFileSystem.protocol


def test_injected_failures_map_to_reasons(failing_protocol):
    assert _reason(f"{failing_protocol}://b/denied") == "permission_denied: Permission denied"
    assert _reason(f"{failing_protocol}://b/forbidden") == "permission_denied: HTTP 403"
    timeout = _reason(f"{failing_protocol}://b/timeout")
    assert timeout.startswith("timeout: TimeoutError")
    assert "ya29.secret" not in timeout


def test_one_filesystem_per_protocol_shared_by_threads(corpus, tmp_path):
    uris = [case.uri for case in corpus if case.kind == "file"] * 4
    with ThreadPoolExecutor(max_workers=8) as pool:
        filesystems = set(pool.map(lambda uri: id(filesystem_for(uri)[0]), uris))
        contents = list(pool.map(fetch_bytes_or_reason, uris))
    assert len(filesystems) == 1
    assert contents == [fetch_bytes_or_reason(uri) for uri in uris]


def fetch_bytes_or_reason(uri: str) -> bytes | str:
    try:
        return fetch_bytes(uri)
    except ImageError as exc:
        return exc.reason


# -- http(s) -------------------------------------------------------------------------------------

_HTTP_OBJECTS = {"/a.jpg": b"\xff\xd8\xffjpeg bytes", "/empty.jpg": b""}
_HTTP_STATUSES = {"/secret.jpg": HTTPStatus.FORBIDDEN, "/broken.jpg": HTTPStatus.INTERNAL_SERVER_ERROR}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path in _HTTP_OBJECTS:
            body, status = _HTTP_OBJECTS[path], HTTPStatus.OK
        else:
            body, status = b"no", _HTTP_STATUSES.get(path, HTTPStatus.NOT_FOUND)
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def http_base():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_http_object(http_base):
    assert fetch_bytes(f"{http_base}/a.jpg") == _HTTP_OBJECTS["/a.jpg"]


def test_http_failures_have_their_reasons(http_base):
    assert _reason(f"{http_base}/missing.jpg").startswith("not_found:")
    assert _reason(f"{http_base}/secret.jpg") == "permission_denied: HTTP 403"
    assert _reason(f"{http_base}/empty.jpg") == "empty_file: 0 bytes"
    assert _reason(f"{http_base}/broken.jpg").startswith("fetch_error: HTTP 500")


def test_http_reasons_drop_credentials_from_urls(http_base):
    host = http_base.removeprefix("http://")
    reason = _reason(f"http://alice:s3cret@{host}/broken.jpg?X-Goog-Signature=abc123")
    assert reason.startswith("fetch_error:")
    assert "s3cret" not in reason and "abc123" not in reason


# -- gs:// through the emulator ------------------------------------------------------------------


def test_gcs_corpus_fetches_and_decodes_to_its_expected_outcome(gcs_emulator, gcs_bucket, corpus):
    files = [case for case in corpus if case.kind == "file"]
    for case in files:
        gcs_emulator.put(f"{gcs_bucket}/images/{case.path.name}", case.data())
    outcomes = {case.name: _outcome(f"{gcs_bucket}/images/{case.path.name}") for case in files}
    assert outcomes == {case.name: case.expected for case in files}
    assert (
        fetch_bytes(f"{gcs_bucket}/images/space and ünïcødé 名前.jpg")
        == by_name(corpus)["unicode_name"].data()
    )


def test_gcs_failures_have_their_reasons(gcs_emulator, gcs_bucket):
    gcs_emulator.put(f"{gcs_bucket}/folder/inside.jpg", b"x")
    assert _reason(f"{gcs_bucket}/missing.jpg") == "not_found: no such file or object"
    assert _reason(f"{gcs_bucket}/folder") == "is_directory: a directory or prefix, not a file"
    assert _reason("gs://no-such-bucket-anywhere/a.jpg").startswith("not_found:")
    assert _reason(gcs_bucket) == _reason(f"{gcs_bucket}/") == "is_directory: a bucket, not an object"


# -- shard manifests -----------------------------------------------------------------------------

_URIS = ["gs://b/a.jpg", "/data/space and ünïcødé 名前.jpg", "file:///data/c.png", "https://x.org/d.webp"]


def test_parquet_manifest_in_order(tmp_path):
    table = pa.table({"image_uri": _URIS, "shard_index": [3] * len(_URIS)})
    pq.write_table(table, tmp_path / "shard.parquet")
    assert read_shard_manifest(str(tmp_path / "shard.parquet")) == _URIS


def test_text_manifest_ignores_blank_lines_and_surrounding_whitespace(tmp_path):
    text = (
        "\ufeff" + "\n".join(f"  {uri}\t\r" for uri in _URIS[:2]) + "\n\n   \n" + "\n".join(_URIS[2:]) + "\n"
    )
    (tmp_path / "shard.txt").write_text(text, encoding="utf-8")
    assert read_shard_manifest(str(tmp_path / "shard.txt")) == _URIS


def test_manifest_is_recognised_by_content_not_name(tmp_path):
    pq.write_table(pa.table({"image_uri": _URIS}), tmp_path / "shard.txt")
    (tmp_path / "shard.parquet").write_text("\n".join(_URIS))
    assert read_shard_manifest(str(tmp_path / "shard.txt")) == _URIS
    assert read_shard_manifest(str(tmp_path / "shard.parquet")) == _URIS


def test_empty_manifests_are_empty(tmp_path):
    (tmp_path / "empty.txt").write_text("\n \n")
    pq.write_table(pa.table({"image_uri": pa.array([], pa.string())}), tmp_path / "empty.parquet")
    assert read_shard_manifest(str(tmp_path / "empty.txt")) == []
    assert read_shard_manifest(str(tmp_path / "empty.parquet")) == []


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("no_column.parquet", pa.table({"uri": ["a"]}), "has no column 'image_uri'"),
        ("ints.parquet", pa.table({"image_uri": [1, 2]}), "is int64, not string"),
        ("null.parquet", pa.table({"image_uri": ["a", None]}), "row 1 has an empty image_uri"),
        ("blank.parquet", pa.table({"image_uri": ["a", "  "]}), "row 1 has an empty image_uri"),
        ("damaged.parquet", b"PAR1" + b"\x00" * 64, "is not readable Parquet"),
        ("binary.txt", b"\xff\xfe\x00garbage\x80", "neither Parquet nor UTF-8 text"),
        ("nul.txt", b"a.jpg\x00b.jpg", "contains NUL bytes"),
    ],
)
def test_unusable_manifests_raise_manifest_error(tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, pa.Table):
        pq.write_table(content, path)
    else:
        path.write_bytes(content)
    with pytest.raises(ShardManifestError, match=message):
        read_shard_manifest(str(path))


def test_missing_manifest_names_itself(tmp_path):
    with pytest.raises(ShardManifestError, match=r"shard manifest not found: .*/nope\.parquet"):
        read_shard_manifest(str(tmp_path / "nope.parquet"))


def test_gcs_manifests(gcs_emulator, gcs_bucket):
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"image_uri": _URIS}), sink)
    gcs_emulator.put(f"{gcs_bucket}/shards/shard-00000.parquet", sink.getvalue().to_pybytes())
    gcs_emulator.put(f"{gcs_bucket}/shards/shard-00001.txt", "\n".join(_URIS).encode())
    assert read_shard_manifest(f"{gcs_bucket}/shards/shard-00000.parquet") == _URIS
    assert read_shard_manifest(f"{gcs_bucket}/shards/shard-00001.txt") == _URIS
    with pytest.raises(ShardManifestError, match="not found"):
        read_shard_manifest(f"{gcs_bucket}/shards/shard-00002.parquet")
