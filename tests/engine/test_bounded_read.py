"""read_bounded / iter_bounded against real special files and misbehaving servers on 127.0.0.1.

Every test runs under a timeout: a regression (a read that blocks) fails instead of hanging.
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import time

import fsspec
import pytest

from detection_engine.bounded_read import (
    FETCH_CODES,
    ReadRefused,
    iter_bounded,
    open_regular_file,
    read_bounded,
)
from tests.hostile_servers import endless_http_server, fixed_http_server, silent_server

pytestmark = pytest.mark.timeout(60)

MIB = 1 << 20


def _code(uri: str, **bounds) -> str:
    bounds = {"max_bytes": MIB, "timeout_s": 10, **bounds}
    with pytest.raises(ReadRefused) as caught:
        read_bounded(uri, **bounds)
    return caught.value.code


def test_a_regular_file_is_read_whole_and_in_chunks(tmp_path):
    path = tmp_path / "image.bin"
    path.write_bytes(os.urandom(3 * MIB + 5))
    assert read_bounded(str(path), max_bytes=4 * MIB, timeout_s=10) == path.read_bytes()
    chunks = list(iter_bounded(f"file://{path}", max_bytes=4 * MIB, timeout_s=10))
    assert len(chunks) > 1 and b"".join(chunks) == path.read_bytes()


def test_a_file_over_the_cap_is_refused(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(b"x" * (MIB + 1))
    assert _code(str(path)) == "too_large"
    assert read_bounded(str(path), max_bytes=MIB + 1, timeout_s=10) == path.read_bytes()


@pytest.mark.parametrize("special", ["fifo", "dev_zero", "symlink_loop", "socket", "directory"])
def test_special_files_are_refused_without_blocking(tmp_path, special):
    if special == "fifo":
        uri = tmp_path / "pipe.jpg"
        os.mkfifo(uri)  # no writer: opening it without O_NONBLOCK would block forever
        expected = "not_a_regular_file"
    elif special == "dev_zero":
        uri, expected = "/dev/zero", "not_a_regular_file"
    elif special == "symlink_loop":
        uri = tmp_path / "loop.jpg"
        os.symlink(tmp_path / "loop2.jpg", uri)
        os.symlink(uri, tmp_path / "loop2.jpg")
        expected = "not_a_regular_file"
    elif special == "socket":
        uri = tmp_path / "sock.jpg"
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(uri))
        expected = "not_a_regular_file"
    else:
        uri, expected = tmp_path, "is_directory"
    assert _code(str(uri)) == expected
    with pytest.raises(ReadRefused) as caught:
        open_regular_file(str(uri), max_bytes=MIB)  # the seekable-file form refuses the same, the same way
    assert caught.value.code == expected


def test_a_regular_file_opens_seekable_within_its_cap(tmp_path):
    path = tmp_path / "list.parquet"
    path.write_bytes(b"PAR1" + b"x" * 100)
    with open_regular_file(str(path), max_bytes=104) as handle:
        handle.seek(-4, os.SEEK_END)
        assert handle.read() == b"xxxx"
    with pytest.raises(ReadRefused, match="too_large: 104 bytes, limit 103"):
        open_regular_file(str(path), max_bytes=103)


def test_missing_empty_and_unreadable_files(tmp_path):
    assert _code(str(tmp_path / "missing.jpg")) == "not_found"
    assert _code(str(tmp_path / "missing" / "deeper.jpg")) == "not_found"
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert _code(str(tmp_path / "empty.jpg")) == "empty_file"
    assert list(iter_bounded(str(tmp_path / "empty.jpg"), max_bytes=1, timeout_s=1)) == []
    if os.geteuid() != 0:
        locked = tmp_path / "locked.jpg"
        locked.write_bytes(b"x")
        locked.chmod(0)
        assert _code(str(locked)) == "permission_denied"


def test_a_symlink_to_a_regular_file_is_followed(tmp_path):
    (tmp_path / "real.jpg").write_bytes(b"pixels")
    os.symlink(tmp_path / "real.jpg", tmp_path / "link.jpg")
    assert read_bounded(str(tmp_path / "link.jpg"), max_bytes=10, timeout_s=1) == b"pixels"


def test_an_endless_http_body_is_cut_off_at_the_cap():
    with endless_http_server() as url:
        started = time.monotonic()
        assert _code(f"{url}/image.jpg", max_bytes=4 * MIB, timeout_s=20) == "too_large"
        assert time.monotonic() - started < 15


def test_an_endless_http_body_under_a_high_cap_ends_at_the_deadline():
    with endless_http_server() as url:
        started = time.monotonic()
        assert _code(f"{url}/image.jpg", max_bytes=1 << 40, timeout_s=2) == "timeout"
        assert time.monotonic() - started < 8


def test_a_silent_server_costs_the_read_timeout_not_minutes():
    with silent_server() as url:
        started = time.monotonic()
        assert _code(f"{url}/image.jpg", timeout_s=30, read_timeout_s=1, connect_timeout_s=1) == "timeout"
        assert time.monotonic() - started < 6


def test_a_silent_server_is_bounded_by_the_total_deadline_too():
    with silent_server() as url:
        started = time.monotonic()
        assert _code(f"{url}/slow.jpg", timeout_s=1.5, read_timeout_s=30) == "timeout"
        assert time.monotonic() - started < 6


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (404, "not_found"),
        (410, "not_found"),
        (401, "permission_denied"),
        (403, "permission_denied"),
        (500, "fetch_error"),
    ],
)
def test_http_statuses_map_to_codes(status, code):
    with fixed_http_server(status, b"nope") as url:
        with pytest.raises(ReadRefused) as caught:
            read_bounded(f"{url}/x.jpg?token=SECRET", max_bytes=MIB, timeout_s=10)
    assert caught.value.code == code
    assert "SECRET" not in caught.value.reason


def test_a_redirect_loop_is_named_as_one():
    with fixed_http_server(302, headers={"Location": "/x.jpg?token=SECRET"}) as url:
        with pytest.raises(ReadRefused) as caught:
            read_bounded(f"{url}/x.jpg?token=SECRET", max_bytes=MIB, timeout_s=10)
    assert caught.value.code == "fetch_error" and "too many redirects" in caught.value.reason
    assert "SECRET" not in caught.value.reason


def test_an_announced_length_over_the_cap_is_refused_before_the_body():
    with fixed_http_server(200, b"x" * 100, {"Content-Length": str(10 * MIB)}) as url:
        assert _code(f"{url}/x.jpg") == "too_large"
    with fixed_http_server(200, b"jpeg bytes") as url:
        assert read_bounded(f"{url}/x.jpg", max_bytes=MIB, timeout_s=10) == b"jpeg bytes"


def test_other_fsspec_filesystems_are_bounded_too():
    memory = fsspec.filesystem("memory")
    memory.pipe("/bounded/a.jpg", b"y" * 100)
    assert read_bounded("memory://bounded/a.jpg", max_bytes=100, timeout_s=5) == b"y" * 100
    assert _code("memory://bounded/a.jpg", max_bytes=99) == "too_large"
    assert _code("memory://bounded/missing.jpg") == "not_found"
    assert _code("nosuchprotocol://x/y.jpg") == "fetch_error"


def test_refusals_have_a_fixed_code_set_and_pickle():
    with pytest.raises(ValueError, match="unknown read refusal code"):
        ReadRefused("bad_luck", "x")
    error = pickle.loads(pickle.dumps(ReadRefused("timeout", "https://u:p@h/x?sig=1 slow")))
    assert error.code == "timeout" and "sig=1" not in error.reason and "u:p" not in error.reason
    assert set(FETCH_CODES) >= {"not_a_regular_file", "too_large", "timeout"}


def test_the_module_imports_neither_torch_nor_pillow_nor_airflow_and_leaves_the_environment_alone():
    code = (
        "import os, sys; before = dict(os.environ); import detection_engine.bounded_read; "
        "bad = [m for m in ('torch', 'PIL', 'airflow', 'gcsfs', 'aiohttp') if m in sys.modules]; "
        "assert not bad, bad; assert dict(os.environ) == before"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
