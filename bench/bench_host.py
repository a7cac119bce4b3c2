"""Benchmark: the host's share of a shard, everything but the model (issue #12).

A GPU pod reaches its images/s target only if its CPUs keep up: fetch, decode, the host tensors, the
Detector's pre- and post-processing, the result rows, the parts committed as it goes and the Parquet file.
This runs one whole shard through the engine's own `run_shard` (the CLI's code, parts and files included)
with a model that answers at once with a fixed number of boxes per image, over JPEGs with photo-like detail
(a smooth field plus grain, about COCO's bytes per pixel), and reports images/s and the CPU seconds each image
costs the host, with the fetch and decode threads' share apart: their milliseconds per image divided into a
pod's CPUs give the most images/s those CPUs could decode (a ceiling: it assumes the threads spread over every
CPU and leaves nothing to the rest).

    .venv/bin/python bench/bench_host.py                           # 640-1024 px photos, decode on 1 and 2 threads
    .venv/bin/python bench/bench_host.py --shapes camera --images 64  # 12 MP camera JPEGs
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    PHOTO_SHAPES,
    add_source_paths,
    cpu_name,
    load_average,
    markdown_table,
    picture,
)

add_source_paths()

import torch  # noqa: E402
from torch import nn  # noqa: E402

from detection_engine import shard as engine_shard  # noqa: E402
from detection_engine.models import MODELS, LoadedModel, ModelOptions  # noqa: E402
from detection_engine.pipeline import PipelineOptions  # noqa: E402
from detection_engine.shard import ShardJob, run_shard  # noqa: E402

MODEL = "fasterrcnn_resnet50_fpn"
SHAPES = {
    "photo": PHOTO_SHAPES,
    "camera": [(4032, 3024), (3024, 4032)],
}
GRAIN = 12.0  # standard deviation of the added grain, in grey levels: ~0.4-0.5 bytes per pixel at quality 90
POD_CPUS = (4, 16)  # the launcher's default CPU request (DETECTION_POD_CPU), and the GPU machine's cores


class InstantDetector(nn.Module):
    """Answers every image at once with `boxes` fixed detections, as torchvision's detectors return them."""

    def __init__(self, boxes: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        corners = torch.rand(boxes, 2, generator=generator) * 400
        self.boxes = torch.cat([corners, corners + 20 + torch.rand(boxes, 2, generator=generator) * 200], 1)
        self.scores = torch.linspace(0.99, 0.5, boxes)
        self.labels = torch.randint(1, 91, (boxes,), generator=generator)

    def forward(self, images):
        return [{"boxes": self.boxes, "scores": self.scores, "labels": self.labels} for _ in images]


def photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """common.picture plus grain: JPEG decode costs what a photo's detail costs, not a smooth field's."""
    pixels = np.asarray(picture(rng, width, height), dtype=np.float32)
    pixels += rng.normal(0.0, GRAIN, pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_photos(directory: Path, count: int, shapes: list[tuple[int, int]]) -> list[tuple[Path, int]]:
    """`count` JPEGs, shapes cycled, with each one's pixels; two distinct pictures per shape, encoded once and
    repeated under other names (decode is per file)."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    distinct = []
    for width, height in shapes:
        for _ in range(2):
            encoded = io.BytesIO()
            photo(rng, width, height).save(encoded, format="JPEG", quality=90)
            distinct.append((encoded.getvalue(), width * height))
    files = []
    for i in range(count):
        data, pixels = distinct[i % len(distinct)]
        path = directory / f"img-{i:06d}.jpg"
        path.write_bytes(data)
        files.append((path, pixels))
    return files


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(paths: list[Path], workdir: Path, decode_workers: int, batch_size: int, boxes: int) -> dict:
    manifest = workdir / "shard.txt"
    manifest.write_text("\n".join(str(p) for p in paths) + "\n")
    output = Path(tempfile.mkdtemp(prefix="out-", dir=workdir))
    options = ModelOptions(MODEL, weights="none", device="cpu")
    instant = LoadedModel(
        InstantDetector(boxes), MODELS[MODEL], torch.device("cpu"), "fp32", "instant", None, True, []
    )
    job = ShardJob(
        manifest=str(manifest),
        output_prefix=str(output),
        run_id="bench_host",
        run_date=date(2026, 12, 8),
        shard_index=0,
        model=options,
        pipeline=PipelineOptions(batch_size=batch_size, decode_workers=decode_workers),
        summary_path=str(output / "summary.json"),
        devices=("cpu",),
    )
    original = engine_shard.load_replicas
    engine_shard.load_replicas = lambda *args, **kwargs: [instant]  # the engine's shard, the model aside
    try:
        cpu_before, started = cpu_seconds(), time.perf_counter()
        summary = run_shard(job)
        wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu_before
    finally:
        engine_shard.load_replicas = original
    metrics = json.loads((output / "metrics" / "shard-00000.json").read_text())
    assert summary["ok"] == len(paths), summary
    return {
        "decode_workers": decode_workers,
        "images": len(paths),
        "wall_s": round(wall, 3),
        "images_per_s": round(len(paths) / wall, 1),
        "cpu_ms_per_image": round(1000 * cpu / len(paths), 2),
        "fetch_ms_per_image": round(1000 * metrics["fetch_s"] / len(paths), 2),
        "decode_ms_per_image": round(1000 * metrics["decode_s"] / len(paths), 2),
        "turn_ms_per_image": round(1000 * metrics["infer_s"] / len(paths), 2),
        "model_busy": round(metrics["model_busy_fraction"], 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--shapes", choices=sorted(SHAPES), default="photo")
    parser.add_argument("--decode-workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--boxes", type=int, default=20, help="detections per image the instant model returns"
    )
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-host-"))
    files = write_photos(workdir / "images", args.images, SHAPES[args.shapes])
    paths = [path for path, _ in files]
    sizes = [path.stat().st_size for path in paths]
    measure(paths[: args.batch_size * 2], workdir, 1, args.batch_size, args.boxes)  # warm-up: imports, pools
    rows = []
    for workers in args.decode_workers:
        runs = [measure(paths, workdir, workers, args.batch_size, args.boxes) for _ in range(args.runs)]
        best = min(runs, key=lambda r: r["wall_s"])
        best["cpu_ms_per_image"] = statistics.median(r["cpu_ms_per_image"] for r in runs)
        rows.append(best)
        print(f"  {workers} decode threads: {best['images_per_s']} images/s", file=sys.stderr)
    report = {
        "machine": {"cpu": cpu_name(), "cpus": os.cpu_count(), "load_1min": load_average()},
        "shapes": args.shapes,
        "mean_file_kb": round(statistics.fmean(sizes) / 1024, 1),
        "bytes_per_pixel": round(sum(sizes) / sum(pixels for _, pixels in files), 3),
        "batch_size": args.batch_size,
        "boxes": args.boxes,
        "rows": rows,
    }
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    headers = [
        "decode threads",
        "images",
        "images/s",
        "CPU ms / image",
        "fetch ms / image",
        "decode ms / image",
        "Detector turn ms / image",
        *[f"decode ceiling, {n} CPUs" for n in POD_CPUS],
    ]
    print(
        f"{time.strftime('%Y-%m-%d')}; {report['machine']['cpu']}, {report['machine']['cpus']} CPUs; load "
        f"{report['machine']['load_1min']}; {args.shapes} JPEGs ({report['mean_file_kb']} KB, "
        f"{report['bytes_per_pixel']} bytes/pixel), batch {args.batch_size}, {args.boxes} boxes per image; best "
        f"wall of {args.runs}, median CPU. Fetch and decode: wall seconds on their threads, summed; the Detector's "
        "turn: host tensors to the device, float conversion there, the instant model, detections back to rows "
        "(on this CPU all of it is host work; on a GPU the conversion is the device's).\n"
    )
    print(
        markdown_table(
            headers,
            [
                [
                    r["decode_workers"],
                    r["images"],
                    r["images_per_s"],
                    r["cpu_ms_per_image"],
                    r["fetch_ms_per_image"],
                    r["decode_ms_per_image"],
                    r["turn_ms_per_image"],
                    *[
                        round(1000 * n / (r["decode_ms_per_image"] + r["fetch_ms_per_image"]))
                        for n in POD_CPUS
                    ],
                ]
                for r in rows
            ],
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
