"""Benchmark: the engine's data path against a naive one-image-at-a-time loop, same images, same weights.

The naive loop is what a first script does: for each file, PIL open, to_tensor, `model([img])`, threshold.
The engine is `run_pipeline` (threaded fetch + decode ahead of the model, fixed batches, aspect-ratio
grouping) with the same `Detector` the CLI uses. Both run in this process on one model object (seeded random
weights: pretrained ones cannot be downloaded here), so only the data path differs. Model load and process
start are left out of both: they are per shard, not per image.

Checked on every run: at batch size 1 the engine's detections equal the naive loop's (1e-4). At larger batch
sizes torchvision pads each batch to its largest image, which changes the features near image borders, so
the table reports how many images kept identical detections, with and without grouping.

    .venv/bin/python bench/bench_engine.py                         # 16 images at 800 px, 16 at 320 px, 3 runs
    .venv/bin/python bench/bench_engine.py --images 4 --small-images 8 --runs 1 --batch-sizes 1 2

Target (issue #2): >= 1.5x the naive loop's images/s at the default image size (800).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import psutil
import torch
import torchvision
from PIL import Image
from torchvision.transforms.functional import to_tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "inference_image"))
sys.path.insert(0, str(ROOT / "bench"))

from box_map import box_map  # noqa: E402

from detection_engine import fast_paths  # noqa: E402
from detection_engine.inference import Detections, Detector  # noqa: E402
from detection_engine.metrics import device_info  # noqa: E402
from detection_engine.models import ModelOptions, cpu_computes, effective_precision, load_model  # noqa: E402
from detection_engine.pipeline import PipelineOptions, run_pipeline  # noqa: E402

# Photo shapes (width, height): 4:3 and 16:9 both ways, so batches mix aspect ratios as real buckets do.
SHAPES = [(640, 480), (480, 640), (800, 600), (1024, 576), (600, 800), (576, 1024), (720, 540), (540, 720)]
SIZES = {"default (800)": (800, 1333), "small (320)": (320, 533)}
SCORE_THRESHOLD, MAX_DETECTIONS = 0.5, 50


def make_images(directory: Path, count: int, seed: int = 0) -> list[str]:
    """JPEGs of smooth colour fields with rectangles: cheap to make, and real work for the decoder."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        width, height = SHAPES[i % len(SHAPES)]
        coarse = rng.integers(0, 256, (height // 32, width // 32, 3), dtype=np.uint8)
        pixels = np.array(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))
        for _ in range(6):
            x, y = int(rng.integers(0, width - 64)), int(rng.integers(0, height - 64))
            w, h = int(rng.integers(32, width // 3)), int(rng.integers(32, height // 3))
            pixels[y : y + h, x : x + w] = rng.integers(0, 256, 3, dtype=np.uint8)
        path = directory / f"photo-{i:04d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(str(path))
    return paths


class PeakRss:
    """Peak resident set of this process while the block runs, sampled every 10 ms; and its CPU time, which
    other processes on a shared machine disturb far less than wall time."""

    def __enter__(self) -> PeakRss:
        self._process = psutil.Process()
        self.peak = self._process.memory_info().rss
        self._cpu_start = sum(self._process.cpu_times()[:2])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.cpu_s = sum(self._process.cpu_times()[:2]) - self._cpu_start

    @property
    def mb(self) -> float:
        return self.peak / 1e6


# The agreement noise floor: fp32 on the same pixels plus Gaussian noise of half a grey level, a change
# nobody can see (JPEG's own rounding is larger). How far that moves the detections says how stable the
# weights' detections are at all; a fast path's mAP is read against it.
NOISE_STD = 0.5 / 255


def naive_loop(model, paths: list[str], noise_std: float = 0.0) -> list[Detections]:
    out = []
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for path in paths:
            image = to_tensor(Image.open(path).convert("RGB"))
            if noise_std:
                image = (image + torch.randn(image.shape, generator=generator) * noise_std).clamp(0, 1)
            (result,) = model([image])
            keep = result["scores"] > SCORE_THRESHOLD
            out.append(
                Detections(
                    boxes=result["boxes"][keep][:MAX_DETECTIONS].numpy(),
                    scores=result["scores"][keep][:MAX_DETECTIONS].numpy(),
                    labels=result["labels"][keep][:MAX_DETECTIONS].numpy(),
                )
            )
    return out


def same(a: Detections, b: Detections) -> bool:
    return (
        len(a) == len(b)
        and np.array_equal(a.labels, b.labels)
        and np.allclose(a.boxes, b.boxes, atol=1e-4, rtol=0)
        and np.allclose(a.scores, b.scores, atol=1e-4, rtol=0)
    )


# The engine's fast paths (fast_paths.py, device_decode.py, --precision), each timed as the engine at batch 1:
# name -> the switches. bf16 runs only where this CPU computes it natively (models.cpu_computes).
FAST_PATHS = {
    "channels_last": {"channels_last": True},
    "decode_on_device": {"decode_on_device": True},
    "prefetch_to_device": {"prefetch_to_device": True},
    "compile": {"compile": True},
    "compile+channels_last": {"compile": True, "channels_last": True},
    "bf16+channels_last": {"channels_last": True, "precision": "bf16"},
    "bf16+compile+channels_last": {"compile": True, "channels_last": True, "precision": "bf16"},
}


@dataclass
class Config:
    size: str
    mode: str  # naive | engine | a FAST_PATHS name (the engine with that fast path on)
    batch_size: int = 1
    group_window: int = 1

    @property
    def label(self) -> str:
        if self.mode == "naive":
            return "naive loop"
        grouping = ""
        if self.batch_size > 1:
            grouping = " grouped" if self.group_window > 1 else ", no grouping"
        experiment = f", {self.mode}" if self.mode in FAST_PATHS else ""
        return f"engine b={self.batch_size}{grouping}{experiment}"


def fast_detector(loaded, name: str, warm_up: list[str]) -> tuple[Detector, float]:
    """A Detector with the fast path `name` on a copy of the model, and the seconds its first image took
    (compiling happens there: a per-shard cost, like model load, kept out of the per-image figures)."""
    switches = FAST_PATHS[name]
    model = fast_paths.apply(
        copy.deepcopy(loaded.model),
        channels_last=switches.get("channels_last", False),
        compile=switches.get("compile", False),
    )
    precision = effective_precision(switches.get("precision", "fp32"), loaded.device)
    detector = Detector(model, loaded.device, precision, SCORE_THRESHOLD, MAX_DETECTIONS)
    started = time.perf_counter()
    run_pipeline(warm_up, detector, PipelineOptions(batch_size=1, fetch_workers=1, decode_workers=1))
    return detector, time.perf_counter() - started


def run_config(
    config: Config, model, detectors: dict[str, Detector], paths: list[str]
) -> tuple[float, float, float, list, float | None]:
    with PeakRss() as rss:
        started = time.perf_counter()
        if config.mode == "naive":
            detections, busy = naive_loop(model, paths), None
        else:
            switches = FAST_PATHS.get(config.mode, {})
            options = PipelineOptions(
                batch_size=config.batch_size,
                fetch_workers=4,
                decode_workers=2,
                group_window=config.group_window,
                decode_on_device=switches.get("decode_on_device", False),
                prefetch_to_device=switches.get("prefetch_to_device", False),
            )
            outcome = run_pipeline(paths, detectors[config.mode], options)
            detections = [r.detections for r in outcome.results]
            busy = outcome.infer_s / outcome.wall_s
        elapsed = time.perf_counter() - started
    return elapsed, rss.cpu_s, rss.mb, detections, busy


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="fasterrcnn_resnet50_fpn")
    parser.add_argument("--images", type=int, default=16, help="images at the default size (800)")
    parser.add_argument("--small-images", type=int, default=16, help="images at the small size (320)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument(
        "--fast-paths",
        nargs="*",
        choices=sorted(FAST_PATHS),
        default=["channels_last"],
        help="also time the engine with each of these fast paths (bf16 ones only where the CPU computes bf16)",
    )
    parser.add_argument(
        "--weights",
        default="none",
        help="none (seeded random init, the default: speed is the same) or a state dict path, e.g. one from "
        "bench/fitted_weights.py, whose confident detections make the agreement column meaningful",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    records = []
    noise_floor: dict[str, float | None] = {}
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        for size, (min_size, max_size) in SIZES.items():
            count = args.images if size.startswith("default") else args.small_images
            paths = make_images(Path(tmp) / size.split()[0], count)
            loaded = load_model(
                ModelOptions(
                    args.model,
                    weights=args.weights,
                    seed=0,
                    device="cpu",
                    min_size=min_size,
                    max_size=max_size,
                    score_threshold=SCORE_THRESHOLD,
                    max_detections=MAX_DETECTIONS,
                )
            )
            detectors = {
                "engine": Detector(loaded.model, loaded.device, "fp32", SCORE_THRESHOLD, MAX_DETECTIONS),
            }
            first_image_s: dict[str, float] = {}
            configs = [Config(size, "naive")]
            configs += [Config(size, "engine", b, 4) for b in args.batch_sizes]
            # Grouping off at the largest batch size, for its effect on speed and detections.
            configs += [Config(size, "engine", b, 1) for b in args.batch_sizes[-1:] if b > 1]
            for name in args.fast_paths:
                if FAST_PATHS[name].get("precision") == "bf16" and not cpu_computes("bf16"):
                    print(f"skipping {name}: this CPU has no native bf16", file=sys.stderr)
                    continue
                detectors[name], first_image_s[name] = fast_detector(loaded, name, paths[:1])
                configs.append(Config(size, name, 1))

            times: dict[str, list[float]] = {c.label: [] for c in configs}
            cpu: dict[str, list[float]] = {c.label: [] for c in configs}
            peaks: dict[str, float] = {c.label: 0.0 for c in configs}
            busy: dict[str, list[float]] = {c.label: [] for c in configs}
            found: dict[str, list] = {}
            naive_loop(loaded.model, paths[:1])  # warm-up: first-call allocations are not per image
            for run in range(args.runs):  # interleaved, so machine noise spreads over all configurations
                for config in configs:
                    elapsed, cpu_s, peak, detections, model_busy = run_config(
                        config, loaded.model, detectors, paths
                    )
                    times[config.label].append(elapsed)
                    cpu[config.label].append(cpu_s)
                    peaks[config.label] = max(peaks[config.label], peak)
                    if model_busy is not None:
                        busy[config.label].append(model_busy)
                    found[config.label] = detections
                    print(
                        f"[{size}] run {run + 1}: {config.label}: {elapsed:.1f}s wall, {cpu_s:.1f}s CPU",
                        file=sys.stderr,
                        flush=True,
                    )

            reference = found["naive loop"]
            noise_floor[size] = box_map(reference, naive_loop(loaded.model, paths, NOISE_STD))
            naive_median = statistics.median(times["naive loop"])
            naive_cpu = statistics.median(cpu["naive loop"])
            if not any(len(d) for d in reference):
                print(f"warning: no detections above {SCORE_THRESHOLD} at {size}", file=sys.stderr)
            for config in configs:
                median = statistics.median(times[config.label])
                identical = sum(same(a, b) for a, b in zip(found[config.label], reference, strict=True))
                if config.label == "engine b=1" and identical != len(paths):
                    raise SystemExit(f"engine at batch size 1 differs from the naive loop at {size}")
                records.append(
                    {
                        "size": size,
                        "config": config.label,
                        "images": len(paths),
                        "runs_s": [round(t, 2) for t in times[config.label]],
                        "median_s": round(median, 2),
                        "images_per_s": round(len(paths) / median, 3),
                        "speedup": round(naive_median / median, 2),
                        "cpu_s_per_image": round(statistics.median(cpu[config.label]) / len(paths), 2),
                        "cpu_speedup": round(naive_cpu / statistics.median(cpu[config.label]), 2),
                        "model_busy": round(statistics.median(busy[config.label]), 3)
                        if busy[config.label]
                        else None,
                        "peak_rss_mb": round(peaks[config.label]),
                        "identical_to_naive": f"{identical}/{len(paths)}",
                        # COCO box mAP with the naive loop's detections as ground truth (1.0: the same).
                        "map_vs_naive": box_map(reference, found[config.label]),
                        "detections": sum(len(d) for d in found[config.label]),
                        "first_image_s": round(first_image_s[config.mode], 1)
                        if config.mode in first_image_s
                        else None,
                    }
                )

    report = {
        "date": date.today().isoformat(),
        "machine": f"{device_info(torch.device('cpu'))['device_name']}, {psutil.virtual_memory().total / 1e9:.0f} GB",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "torch_threads": torch.get_num_threads(),
        "model": args.model,
        "weights": "random init, seed 0" if args.weights == "none" else f"state dict {args.weights}",
        "runs": args.runs,
        "results": records,
        "noise_floor_map": noise_floor,
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    return 0


def markdown(report: dict) -> str:
    lines = [
        f"{report['model']}, {report['weights']}; {report['machine']}; torch {report['torch']} "
        f"({report['torch_threads']} threads); median of {report['runs']} runs",
        "",
        "| size | configuration | images | median wall s | images/s | vs naive (wall) | CPU s/image "
        "| vs naive (CPU) | model busy | peak RSS MB | same detections as naive | mAP vs naive "
        "| first image s (compiles) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        busy = "" if r["model_busy"] is None else f"{r['model_busy']:.2f}"
        agreement = "" if r.get("map_vs_naive") is None else f"{r['map_vs_naive']:.4f}"
        lines.append(
            f"| {r['size']} | {r['config']} | {r['images']} | {r['median_s']} | {r['images_per_s']} | "
            f"{r['speedup']}x | {r['cpu_s_per_image']} | {r['cpu_speedup']}x | {busy} | {r['peak_rss_mb']} | "
            f"{r['identical_to_naive']} | {agreement} | {r['first_image_s'] or ''} |"
        )
    floors = ", ".join(
        f"{size}: {value:.4f}" for size, value in report["noise_floor_map"].items() if value is not None
    )
    lines += [
        "",
        f"Noise floor (mAP of fp32 on the same images plus Gaussian noise of sigma {NOISE_STD * 255:.1f} grey "
        f"levels, against fp32 without): {floors or 'n/a'}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
