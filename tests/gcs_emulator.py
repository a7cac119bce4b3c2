"""A real Google Cloud Storage JSON API on localhost, for tests of every gs:// code path.

`GcsEmulator.start()` runs gcp-storage-emulator (in memory) in a child process, so it serves requests while
the test process is busy, and engine subprocesses reach it through the inherited STORAGE_EMULATOR_HOST.
gcsfs talks to it unchanged: point STORAGE_EMULATOR_HOST at it and use token="anon".

Run by hand for local development:  python tests/gcs_emulator.py --port 9023
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

# Before anything imports gcsfs: otherwise its experimental zonal/HNS filesystem probes each bucket over gRPC,
# which stalls ~60 s per bucket against an emulator.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

_HOST = "127.0.0.1"
_STARTUP_TIMEOUT_S = 30.0
_bucket_numbers = itertools.count()


def object_bytes(size: int, seed: int) -> bytes:
    """`size` seeded random bytes for an object, never ending in a carriage return: gcp-storage-emulator's
    upload parsing drops an object's final CR (real GCS keeps it), which failed 1 run in 256 of tests that
    used os.urandom."""
    data = bytearray(random.Random(seed).randbytes(size))
    if data and data[-1] == 0x0D:
        data[-1] = 0x0A
    return bytes(data)


class GcsEmulator:
    """A running emulator: its endpoint, the environment that points clients at it, and upload helpers."""

    def __init__(self, process: subprocess.Popen, endpoint: str, log_path: Path) -> None:
        self._process = process
        self.endpoint = endpoint
        self._log_path = log_path
        self._fs = None

    @classmethod
    def start(cls, attempts: int = 3) -> GcsEmulator:
        """Start on a free port; retried because another process may take the port before the child binds it."""
        for attempt in range(1, attempts + 1):
            log_path = Path(tempfile.mkstemp(prefix="gcs-emulator-", suffix=".log")[1])
            port = _free_port()
            with log_path.open("wb") as log:
                process = subprocess.Popen(
                    [sys.executable, __file__, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT
                )
            emulator = cls(process, f"http://{_HOST}:{port}", log_path)
            try:
                emulator._wait_until_ready()
            except RuntimeError:
                if attempt == attempts:
                    raise
            else:
                return emulator
        raise AssertionError("unreachable")

    def __enter__(self) -> GcsEmulator:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._log_path.unlink(missing_ok=True)

    def env(self) -> dict[str, str]:
        """What a process (this one, or an engine subprocess) needs in its environment to use the emulator."""
        return {"STORAGE_EMULATOR_HOST": self.endpoint, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}

    @property
    def fs(self):
        """A gcsfs client of its own (not fsspec's shared instance), so its caches never mask the code under test."""
        if self._fs is None:
            import gcsfs

            self._fs = gcsfs.GCSFileSystem(token="anon", endpoint_url=self.endpoint, skip_instance_cache=True)
        return self._fs

    def create_bucket(self, prefix: str = "test") -> str:
        """A new, empty bucket with a unique name; returns "gs://name". Tests never share state this way."""
        name = f"{prefix}-{os.getpid()}-{next(_bucket_numbers)}-{uuid.uuid4().hex[:8]}".lower()
        self.fs.mkdir(name)
        return f"gs://{name}"

    def put(self, uri: str, data: bytes) -> None:
        if data.endswith(b"\r"):  # would be stored one byte short: a flaky test, not a finding (object_bytes)
            raise ValueError("the emulator drops an object's final carriage return; real GCS keeps it")
        self.fs.pipe_file(_path(uri), data)

    def get(self, uri: str) -> bytes:
        return self.fs.cat_file(_path(uri))

    def ls(self, uri: str) -> list[str]:
        """gs:// URIs of every object under `uri`, always fresh from the server."""
        self.fs.invalidate_cache()
        return sorted(f"gs://{p}" for p in self.fs.find(_path(uri)))

    def reset(self) -> None:
        """Delete every bucket and object."""
        with urllib.request.urlopen(f"{self.endpoint}/wipe", timeout=10) as response:
            response.read()
        self.fs.invalidate_cache()

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + _STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.endpoint}/", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        log = self._log_path.read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"gcp-storage-emulator did not start at {self.endpoint}:\n{log}")


def _path(uri: str) -> str:
    return uri.removeprefix("gs://").removeprefix("gcs://")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((_HOST, 0))
        return sock.getsockname()[1]


# -- the child process ---------------------------------------------------------------------------


def _serve(port: int) -> None:
    import logging
    from http import HTTPStatus
    from http import server as http_server

    from gcp_storage_emulator import server
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    logging.basicConfig(level=logging.CRITICAL)
    # The emulator answers one request at a time; queue bursts of concurrent fetches instead of refusing them.
    http_server.HTTPServer.request_queue_size = 128

    def move(request, response, storage):
        # gcsfs's mv calls objects.moveTo first; the emulator lacks it and answers 501, which gcsfs retries
        # for ~30 s before falling back to copy + delete. Serve it as exactly that copy + delete.
        params = request.params
        bucket = params["bucket_name"]
        try:
            moved = objects._copy(
                request.base_url, storage, bucket, params["object_id"], bucket, params["dest_object_id"]
            )
            storage.delete_file(bucket, params["object_id"])
        except NotFound:
            response.status = HTTPStatus.NOT_FOUND
            return
        response.json(moved)

    move_route = (
        rf"^{server.settings.API_ENDPOINT}/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)"
        r"/moveTo/o/(?P<dest_object_id>.*[^/]+)$",
        {server.POST: move},
    )
    server.HANDLERS = (move_route, *server.HANDLERS)
    server.create_server(_HOST, port, in_memory=True).run()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9023)
    _serve(parser.parse_args().port)
