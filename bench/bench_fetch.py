"""Benchmark: how fast the engine's data path can feed a model when every read waits on the network (issue #12).

An object store answers each GET after a round trip (tens of milliseconds for GCS in-region), so a shard's
fetch threads bound its images/s at about `fetch_workers / latency` whatever the GPU does (Little's law). This
measures that ceiling on the real data path: `run_pipeline` (fetch pool, decode pool, look-ahead, grouping)
over small JPEGs served by a local HTTP server that holds each response for `--latency-ms`, feeding a model
that returns at once, at a GPU-sized batch. Nothing here is the GPU: it is the rate the GPU would be fed. The
server runs in a process of its own; on the 2-vCPU reference machine the CPU (client, decode and server
together) becomes the limit past ~16 threads, not the fetch design.

    .venv/bin/python bench/bench_fetch.py                         # 40 ms, 8/16/32/64 fetch threads
    .venv/bin/python bench/bench_fetch.py --latency-ms 20 --images 600 --workers 8 32
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import platform
import statistics
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "inference_image"))


def _jpeg(index: int, size: int = 96) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size * 3 // 4), (index * 37 % 256, 120, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default backlog of 5 drops connects under load: seconds of SYN retries


class _DelayedFiles(BaseHTTPRequestHandler):
    """GET /N.jpg answers image N after the configured latency, like an object store's time to first byte."""

    bodies: list[bytes] = []
    latency_s = 0.04

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        time.sleep(self.latency_s)
        body = self.bodies[int(self.path.strip("/").split(".")[0]) % len(self.bodies)]
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def _serve(latency_s: float, ready) -> None:
    _DelayedFiles.bodies = [_jpeg(i) for i in range(64)]
    _DelayedFiles.latency_s = latency_s
    server = _Server(("127.0.0.1", 0), _DelayedFiles)
    ready.put(server.server_address[1])
    server.serve_forever()


def _instant_model(inputs):
    import torch

    empty = {
        "boxes": torch.zeros((0, 4)),
        "scores": torch.zeros(0),
        "labels": torch.zeros(0, dtype=torch.int64),
    }
    return [empty for _ in inputs]


def measure(base: str, images: int, workers: int, batch_size: int) -> dict:
    import torch

    from detection_engine.inference import Detector
    from detection_engine.pipeline import PipelineOptions, run_pipeline

    uris = [f"{base}/{i}.jpg" for i in range(images)]
    detector = Detector(_instant_model, torch.device("cpu"))
    options = PipelineOptions(batch_size=batch_size, fetch_workers=workers, decode_workers=2)
    started = time.perf_counter()
    outcome = run_pipeline(uris, detector, options)
    wall = time.perf_counter() - started
    failed = sum(1 for r in outcome.results if r.error)
    return {
        "workers": workers,
        "images": images,
        "failed": failed,
        "wall_s": round(wall, 2),
        "images_per_s": round(images / wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--latency-ms", type=float, default=40.0)
    parser.add_argument("--images", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    ready = multiprocessing.Queue()
    server = multiprocessing.Process(target=_serve, args=(args.latency_ms / 1000, ready), daemon=True)
    server.start()  # a process of its own: the server's work must not take the engine's GIL
    base = f"http://127.0.0.1:{ready.get(timeout=30)}"
    print(
        f"machine: {platform.machine()}, Python {platform.python_version()}; latency {args.latency_ms:g} ms, "
        f"batch {args.batch_size}, {args.images} JPEGs of ~{len(_jpeg(0)):,} bytes"
    )
    measure(base, 64, 8, args.batch_size)  # warm-up: imports, the HTTP filesystem, its connection pool
    rows = []
    for workers in args.workers:
        runs = [measure(base, args.images, workers, args.batch_size) for _ in range(args.repeat)]
        best = dict(runs[0], images_per_s=statistics.median(r["images_per_s"] for r in runs))
        best["ceiling_images_per_s"] = round(workers / (args.latency_ms / 1000), 1)
        rows.append(best)
        print(json.dumps(best))
    server.terminate()
    print("\n| fetch threads | images/s (median) | workers / latency |\n|---:|---:|---:|")
    for row in rows:
        print(f"| {row['workers']} | {row['images_per_s']:,} | {row['ceiling_images_per_s']:,} |")


if __name__ == "__main__":
    main()
