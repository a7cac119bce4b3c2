"""Benchmark: what committing as you go costs, and what a preemption loses with and without it (issue #14).

Runs the real engine CLI (`python -m detection_engine`, one subprocess per run) over one shard of small
generated images with a tiny model (MobileNet 320, seeded random weights, CPU):

1. cost: the data path's images/s (the shard metrics' images_per_s, model load and process start excluded)
   with parts off (`--commit-every 0 --commit-every-s 0`: one results file at the end, as before) and with a
   part every N images;
2. work lost per preemption: the engine killed once 90% of the shard is done, then run again. Lost images =
   images finished before the kill - images the rerun resumed. SIGKILL with parts off loses the whole 90%
   (the old behaviour); SIGKILL with parts loses at most one part; SIGTERM (the clean stop) loses nothing;
3. one commit, in this process: build, encode and atomically write a part of 100 / 1,000 / 10,000 rows with
   6 detections each (the engine's own writer), median of 10: what a part costs per image, whatever the model.

    .venv/bin/python bench/bench_parts.py                       # 240 images, parts of 24, 3 repetitions
    .venv/bin/python bench/bench_parts.py --images 120 --commit-every 12 --repeat 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "inference_image")}
MODEL = "fasterrcnn_mobilenet_v3_large_320_fpn"


def make_images(directory: Path, count: int) -> Path:
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        path = directory / f"image-{i:05d}.png"
        Image.fromarray(coarse).resize((96 + i % 3 * 16, 72), Image.BILINEAR).save(path)
        paths.append(str(path))
    manifest = directory / "shard.txt"
    manifest.write_text("\n".join(paths) + "\n")
    return manifest


def command(manifest: Path, out: Path, commit_every: int, batch_size: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "detection_engine",
        f"--manifest={manifest}",
        f"--output-prefix={out}",
        "--run-id=bench",
        "--run-date=2026-12-02",
        "--shard-index=0",
        f"--model={MODEL}",
        "--weights=none",
        "--device=cpu",
        f"--batch-size={batch_size}",
        f"--commit-every={commit_every}",
        "--commit-every-s=0",
        "--log-interval-s=0.000001",
        f"--summary-path={out / 'summary.json'}",
    ]


def metrics(out: Path) -> dict:
    return json.loads((out / "bench" / "metrics" / "shard-00000.json").read_text())


def run(argv: list[str]) -> None:
    result = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        sys.exit(f"engine exited {result.returncode}: {result.stderr[-2000:]}")


def interrupted(argv: list[str], images: int, sig: signal.Signals) -> int:
    """Run until 90% of the images are done, send `sig`; return the images done when it was sent."""
    at = int(images * 0.9)
    with subprocess.Popen(argv, env=ENV, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True) as p:
        done = 0
        for line in p.stderr:
            found = re.search(r": (\d+)/\d+ images", line)
            if found and int(found[1]) >= at:
                done = int(found[1])
                p.send_signal(sig)
                break
        for _ in p.stderr:
            pass
        p.wait(timeout=600)
    return done


def commit_cost(root: Path) -> None:
    """Milliseconds per commit and per image for parts of several sizes (the engine's writer, local disk)."""
    sys.path.insert(0, str(ROOT / "inference_image"))
    import time
    from datetime import UTC, datetime

    from detection_engine.inference import Detections
    from detection_engine.pipeline import ImageResult
    from detection_engine.writer import RowContext, parquet_bytes, results_table, write_atomic

    ctx = RowContext(
        "bench", date(2026, 12, 2), 0, MODEL, "none", True, datetime.now(UTC), ["background", "x"]
    )
    rng = np.random.default_rng(0)
    print("\n| rows per part | ms per commit (median of 10) | ms per image |")
    print("|---|---|---|")
    for rows in (100, 1000, 10000):
        detections = Detections(
            boxes=rng.random((6, 4)).astype(np.float32) * 100,
            scores=rng.random(6).astype(np.float32),
            labels=np.ones(6, dtype=np.int64),
        )
        results = [ImageResult(f"gs://b/img-{i:08d}.jpg", None, 640, 480, detections, 0.01, 0.01, 0.02)
                   for i in range(rows)]  # fmt: skip
        times = []
        for i in range(10):
            started = time.perf_counter()
            write_atomic(
                str(root / "parts" / f"part-{rows}-{i}.parquet"), parquet_bytes(results_table(results, ctx))
            )
            times.append(time.perf_counter() - started)
        ms = statistics.median(times) * 1000
        print(f"| {rows} | {ms:.1f} | {ms / rows:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--commit-every", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--commit-only", action="store_true", help="only the in-process commit cost")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        commit_cost(root)
        if args.commit_only:
            return
        manifest = make_images(root / "images", args.images)
        print(
            f"# {date.today()}  {platform.processor() or platform.machine()} x{os.cpu_count()}  "
            f"{args.images} images, batch {args.batch_size}, {MODEL}, CPU; load {os.getloadavg()[0]:.1f}"
        )

        print(f"\n| parts | images/s (median of {args.repeat}) | runs |")
        print("|---|---|---|")
        for every in (0, args.commit_every, max(1, args.commit_every // 4)):
            speeds = []
            for i in range(args.repeat):
                out = root / f"cost-{every}-{i}"
                run(command(manifest, out / "bench", every, args.batch_size))
                speeds.append(metrics(out)["images_per_s"])
            label = "off (one file at the end)" if every == 0 else f"every {every} images"
            print(f"| {label} | {statistics.median(speeds):.2f} | {', '.join(f'{s:.2f}' for s in speeds)} |")

        print("\n| kill at 90% | parts | images done | resumed by the rerun | lost (redone) |")
        print("|---|---|---|---|---|")
        for sig, every in (
            (signal.SIGKILL, 0),
            (signal.SIGKILL, args.commit_every),
            (signal.SIGTERM, args.commit_every),
        ):
            out = root / f"kill-{sig.name}-{every}"
            argv = command(manifest, out / "bench", every, args.batch_size)
            done = interrupted(argv, args.images, sig)
            run(argv)
            resumed = metrics(out)["resumed_images"]
            label = "off" if every == 0 else f"every {every}"
            print(f"| {sig.name} | {label} | {done} | {resumed} | {max(0, done - resumed)} |")


if __name__ == "__main__":
    main()
