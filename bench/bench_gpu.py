"""Benchmark: Faster R-CNN R50-FPN v1 on one GPU, through the engine's own API.

Measured, each with the engine's code (`load_replicas`, `Detector`, `run_pipeline`, `python -m detection_engine`):

1. images/s at batch auto (the engine's default, auto_batch.py) and 1/8/16/32 in fp32, fp16 and bf16 (`run_pipeline` over N JPEGs on local disk: fetch,
   decode and inference overlapped as in a shard), with the share of wall time the model is busy
   (`infer_s / wall_s`, the engine's own `model_busy_fraction`), mean GPU utilisation (NVML) and peak memory;
2. agreement with the fp32 default (fp32 at the auto batch), its detections taken as ground truth: COCO box
   mAP (bench/box_map.py) of every row and of each fast path (the engine's `--channels-last`, `--compile`,
   `--decode-on-device` and `--prefetch-to-device`, in fp32 and at the fastest reduced precision; compiling
   is timed apart, in the warm-up); targets: fp32 variants >= 0.99, reduced precision >= 0.95. Also the
   older F1 (same label, IoU >= 0.5) against fp32 at the same batch size;
3. decode alone: the engine's CPU decode (Pillow on its decode threads) against its `--decode-on-device`
   decode (device_decode.py: nvJPEG through `torchvision.io.decode_jpeg`, batched), and how far their pixels
   differ;
4. end to end: one shard through `python -m detection_engine` (process start, CUDA init, model load, the data
   path, results Parquet written) at the fastest reduced precision and batch size, on `--devices cuda:0` and on
   `--devices auto` (every visible GPU, one model replica each), and with `--decode-on-device
   --prefetch-to-device` on both.

Weights: `--weights` when given (DEFAULT, a state dict path, `fitted`, or `none` for random init), else
torchvision's COCO weights when they are in the torch hub cache, else `fitted`: the random backbone with its
heads fitted to generated pictures on the device first (bench/fitted_weights.py, 300 steps). Speed is the same
with any weights; a random model's hundreds of near-tied scores make agreement figures meaningless, a fitted
one's detections are confident and separated like a trained model's.

    .venv/bin/python bench/bench_gpu.py --out gpu.json               # on a CUDA machine
    .venv/bin/python bench/bench_gpu.py --quick --out gpu.json       # <= 6 min on one H200: BENCHMARKS.md's tables
    .venv/bin/python bench/bench_gpu.py --quick --no-compile         # the same without the two compiles
    .venv/bin/python bench/bench_gpu.py --allow-cpu                  # tiny smoke run on CPU: the script works
    .venv/bin/python bench/bench_gpu.py --tables-from gpu.json       # the tables of a saved run

For a short lease: `--out` is rewritten after each section, and `--budget-s` (420 s with `--quick`) skips the
rows that would start after it, listing them; the fp32 reference row always runs.

Without CUDA the script refuses (exit 2) unless `--allow-cpu`, which runs it tiny (16 images at ~100 px, model
size 64, batches auto, 1 and 8, one run; fp16/bf16 fall back to fp32 on CPU as in the engine) to show it works, not
how fast anything is.

Targets (issue #6): model busy >= 90%; >= 400 images/s end to end on one H200 at reduced precision.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    PHOTO_SHAPES,
    ROOT,
    add_source_paths,
    load_average,
    markdown_table,
    write_images,
)

add_source_paths()

import fitted_weights  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from box_map import box_map  # noqa: E402
from torchvision.models import get_model_weights  # noqa: E402

from detection_engine import fast_paths as engine_fast_paths  # noqa: E402
from detection_engine.auto_batch import AUTO, choose_batch_size, parse_batch_size  # noqa: E402
from detection_engine.decode import DEFAULT_MAX_PIXELS, decode_image  # noqa: E402
from detection_engine.device_decode import decode_batch, device_decodable  # noqa: E402
from detection_engine.fast_paths import CompiledBackbone  # noqa: E402
from detection_engine.fetch import fetch_bytes  # noqa: E402
from detection_engine.inference import Detections, Detector  # noqa: E402
from detection_engine.metrics import UtilizationSampler  # noqa: E402
from detection_engine.models import ModelOptions, effective_precision  # noqa: E402
from detection_engine.pipeline import PipelineOptions, run_pipeline  # noqa: E402
from detection_engine.preprocess import host_tensor  # noqa: E402
from detection_engine.replicas import load_replicas  # noqa: E402

MODEL = "fasterrcnn_resnet50_fpn"
SMOKE_SHAPES = [(128, 96), (96, 128), (112, 112)]
MATCH_IOU = 0.5
TARGET_BUSY, TARGET_IMAGES_PER_S = 0.90, 400.0
TARGET_MAP = {"fp32": 0.99, "fp16": 0.95, "bf16": 0.95}  # COCO box mAP against the fp32 default's detections
FITTED, FITTED_STEPS = "fitted", 300
QUICK_IMAGES, QUICK_BATCH_SIZES = 384, [AUTO, 8, 16]
# A lease is 15 device minutes and a command at most 10: the quick run stops starting new rows after this.
QUICK_BUDGET_S = 420.0
# A compiled row's warm-up compiles up to three graphs (torch 2.11; 23-41 s each on a 2-core CPU, a GPU's
# Triton compile estimated at a minute): start one only with this much budget left, not run past the lease.
COMPILE_NEEDS_S = 150.0


@dataclass(frozen=True)
class Plan:
    """What to run: the full benchmark on CUDA, or the tiny smoke version on CPU."""

    device: torch.device
    smoke: bool
    images: int
    shapes: list[tuple[int, int]]
    min_size: int | None
    max_size: int | None
    batch_sizes: list[int | str]
    precisions: list[str]
    runs: int
    weights: str
    score_threshold: float
    fetch_workers: int
    decode_workers: int


@dataclass
class Budget:
    """Seconds the run may take before it skips what is left, so that a short GPU lease (a command's 10
    minutes, the session's 15) still ends with tables: what ran is reported, what was skipped is listed."""

    seconds: float | None
    started: float = dataclasses.field(default_factory=time.perf_counter)
    skipped: list[str] = dataclasses.field(default_factory=list)

    def allows(self, what: str, needs_s: float = 0.0) -> bool:
        """Whether `what`, expected to take about `needs_s`, may start: it would end within the budget."""
        if self.seconds is None or time.perf_counter() - self.started + needs_s < self.seconds:
            return True
        self.skipped.append(what)
        print(f"bench_gpu: time budget of {self.seconds:.0f} s spent; skipping {what}", file=sys.stderr)
        return False


def plan(args: argparse.Namespace) -> Plan:
    defaults = PipelineOptions()
    common = {
        "precisions": args.precisions,
        "weights": choose_weights(args.weights),
        "score_threshold": args.score_threshold,
        "fetch_workers": args.fetch_workers or defaults.fetch_workers,
        "decode_workers": args.decode_workers or defaults.decode_workers,
    }
    if torch.cuda.is_available():
        return Plan(
            torch.device("cuda"),
            False,
            args.images,
            PHOTO_SHAPES,
            args.min_size,
            args.max_size,
            args.batch_sizes,
            runs=args.runs,
            **common,
        )
    return Plan(
        torch.device("cpu"),
        True,
        16,
        SMOKE_SHAPES,
        64,
        128,
        [AUTO, *[b for b in args.batch_sizes if b != AUTO and b <= 8][:2]],
        runs=1,
        **common,
    )


def choose_weights(requested: str | None) -> str:
    """What was asked, else the COCO weights when cached (no network on GPU machines), else `fitted`."""
    if requested:
        return requested
    url = get_model_weights(MODEL).DEFAULT.url
    if (Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name).exists():
        return "DEFAULT"
    print(
        f"bench_gpu: {MODEL} COCO weights are not in {torch.hub.get_dir()}; fitting heads to generated "
        "pictures instead (bench/fitted_weights.py: same speed, confident detections for the agreement figures)",
        file=sys.stderr,
    )
    return FITTED


def materialise_weights(p: Plan, workdir: Path) -> Plan:
    """`fitted` made into a state dict file the engine loads like any other (on the device: seconds)."""
    if p.weights != FITTED:
        return p
    started = time.perf_counter()
    state = fitted_weights.fit(
        steps=3 if p.smoke else FITTED_STEPS,
        seed=0,
        min_size=512,
        max_size=853,
        device=str(p.device),
        log=lambda m: None,
    )
    path = workdir / "fitted.pth"
    torch.save(state, path)
    print(f"bench_gpu: fitted weights in {time.perf_counter() - started:.0f} s: {path}", file=sys.stderr)
    return dataclasses.replace(p, weights=str(path))


# -- 1 and 2: throughput, model busy, agreement -----------------------------------------------------


def throughput_grid(p: Plan, loaded, uris: list[str], budget: Budget) -> tuple[list[dict], dict]:
    """Every (precision, batch size) through run_pipeline; returns rows and each one's detections. The fp32
    auto row runs whatever the budget: it is the reference for agreement."""
    rows, found = [], {}
    for requested in p.precisions:
        precision = effective_precision(requested, p.device)
        detector = Detector(loaded.model, p.device, precision, p.score_threshold, 50)
        for requested_batch in p.batch_sizes:
            reference = requested == "fp32" and requested_batch == AUTO
            if not reference and not budget.allows(f"grid {requested} batch {requested_batch}"):
                continue
            batch_size = choose_batch_size(requested_batch, [detector])
            options = PipelineOptions(
                batch_size=batch_size, fetch_workers=p.fetch_workers, decode_workers=p.decode_workers
            )
            run_pipeline(uris[: max(2 * batch_size, 8)], detector, options)  # warm-up: allocator, kernels
            walls, busy, utilization, peaks = [], [], [], []
            for _ in range(p.runs):
                reset_peak_memory(p.device)
                with UtilizationSampler(p.device, interval_s=0.2) as sampler:
                    outcome = run_pipeline(uris, detector, options)
                walls.append(outcome.wall_s)
                busy.append(outcome.infer_s / outcome.wall_s)
                utilization.append(sampler.mean)
                peaks.append(peak_memory_mib(p.device))
            found[(requested, requested_batch)] = [r.detections for r in outcome.results]
            wall = statistics.median(walls)
            rows.append(
                {
                    "precision": requested,
                    "ran_as": precision,
                    "batch_size": batch_size,
                    "batch": requested_batch,
                    "images": len(uris),
                    "wall_s": [round(w, 3) for w in walls],
                    "images_per_s": round(len(uris) / wall, 1),
                    "model_busy": round(statistics.median(busy), 3),
                    "gpu_utilization": None
                    if None in utilization
                    else round(statistics.median(utilization), 1),
                    "peak_memory_mib": round(max(peaks), 1),
                    "detections": sum(len(d) for d in found[(requested, requested_batch)] if d is not None),
                }
            )
            print(f"  {requested} b={batch_size}: {rows[-1]['images_per_s']} images/s", file=sys.stderr)
    default = found[("fp32", AUTO)]
    for row in rows:
        reference = found.get(("fp32", row["batch"]))
        mine = found[(row["precision"], row["batch"])]
        row["agreement_with_fp32"] = (
            agreement(reference, mine) if reference is not None and row["precision"] != "fp32" else None
        )
        row["map_vs_fp32_default"] = _map(default, mine)
    return rows, found


def _map(reference: list, candidate: list) -> float | None:
    value = box_map(reference, candidate)
    return None if value is None else round(value, 4)


@dataclass(frozen=True)
class FastPath:
    """One of the engine's fast paths as its switches set it, at "fp32" or the "fastest" reduced precision."""

    name: str
    precision: str
    channels_last: bool = False
    compile: bool = False
    decode_on_device: bool = False
    prefetch_to_device: bool = False


# Each timed at the auto batch (detection_engine.fast_paths and device_decode, as the engine's switches).
FAST_PATHS = [
    FastPath("channels_last", "fp32", channels_last=True),
    FastPath("channels_last", "fastest", channels_last=True),
    FastPath("decode_on_device", "fp32", decode_on_device=True),
    FastPath("decode_on_device", "fastest", decode_on_device=True),
    FastPath("prefetch_to_device", "fastest", prefetch_to_device=True),
    FastPath(
        "decode_on_device + prefetch_to_device", "fastest", decode_on_device=True, prefetch_to_device=True
    ),
    FastPath("compile", "fp32", compile=True),
    FastPath("compile + channels_last", "fastest", channels_last=True, compile=True),
]


def fast_paths(
    p: Plan,
    loaded,
    uris: list[str],
    default: list,
    fastest: dict,
    budget: Budget,
    compile: bool = True,
    after_row: Callable[[list[dict]], None] = lambda rows: None,
) -> list[dict]:
    """Each fast path on a copy of the model, at the auto batch, scored against the fp32 default's
    detections. The compiled rows' warm-up is where compiling happens: reported apart (a per-shard cost),
    with the graphs compiled in it and, should an input outside their guards come later, while timed."""
    rows = []
    for path in FAST_PATHS:
        if path.compile and not compile:
            continue
        precision = fastest["ran_as"] if path.precision == "fastest" else "fp32"
        label = path.name if precision == "fp32" else f"{path.name} + {precision}"
        if not budget.allows(f"fast path {label}", COMPILE_NEEDS_S if path.compile else 0.0):
            continue
        model = engine_fast_paths.apply(copy.deepcopy(loaded.model), path.channels_last, path.compile)
        detector = Detector(model, p.device, precision, p.score_threshold, 50)
        options = PipelineOptions(
            batch_size=choose_batch_size(AUTO, [detector]),
            fetch_workers=p.fetch_workers,
            decode_workers=p.decode_workers,
            decode_on_device=path.decode_on_device,
            prefetch_to_device=path.prefetch_to_device,
        )
        started = time.perf_counter()
        run_pipeline(uris[: max(2 * options.batch_size, 8)], detector, options)  # warm-up (compiles)
        warm_up_s = time.perf_counter() - started
        graphs_warm_up = compiled_graphs(model)
        outcome = run_pipeline(uris, detector, options)
        ran = engine_fast_paths.describe([model])
        graphs_timed = None if graphs_warm_up is None else compiled_graphs(model) - graphs_warm_up
        rows.append(
            {
                "fast_path": label + ("" if ran["compile"] in ("on", "off") else f" ({ran['compile']})"),
                "precision": precision,
                "batch_size": options.batch_size,
                "warm_up_s": round(warm_up_s, 1),
                "graphs_warm_up": graphs_warm_up,
                "graphs_timed": graphs_timed,  # > 0: the images/s include compiling
                "images_per_s": round(len(uris) / outcome.wall_s, 1),
                "model_busy": round(outcome.infer_s / outcome.wall_s, 3),
                "map_vs_fp32_default": _map(default, [r.detections for r in outcome.results]),
                "target": TARGET_MAP[precision],
            }
        )
        print(f"  fast path {label}: {rows[-1]['images_per_s']} images/s", file=sys.stderr)
        after_row(rows)
        del detector, model
    return rows


def compiled_graphs(model) -> int | None:
    """Graphs the engine's compiled backbone has compiled so far (None: not compiled)."""
    backbone = getattr(model, "backbone", None)
    return backbone.graphs if isinstance(backbone, CompiledBackbone) else None


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1, y1 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x2, y2 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def agreement(reference: list[Detections | None], other: list[Detections | None]) -> dict:
    """How far `other` agrees with `reference`: detections matched one to one (same label, IoU >= 0.5,
    greedily by score), as F1 = 2 * matched / (both counts); the mean score difference of matched pairs; and
    the images whose detections match exactly in count and labels."""
    matched = total = same_images = 0
    score_diffs = []
    for ref, oth in zip(reference, other, strict=True):
        if ref is None or oth is None:
            continue
        total += len(ref) + len(oth)
        used = np.zeros(len(ref), dtype=bool)
        for j in np.argsort(-oth.scores, kind="stable"):
            candidates = (~used) & (ref.labels == oth.labels[j])
            if not candidates.any():
                continue
            overlaps = np.where(candidates, iou(oth.boxes[j], ref.boxes), -1.0)
            best = int(np.argmax(overlaps))
            if overlaps[best] >= MATCH_IOU:
                used[best] = True
                matched += 1
                score_diffs.append(abs(float(ref.scores[best]) - float(oth.scores[j])))
        same_images += len(ref) == len(oth) and sorted(ref.labels.tolist()) == sorted(oth.labels.tolist())
    return {
        "f1": round(2 * matched / total, 4) if total else None,  # None: no detections on either side
        "mean_score_diff": round(statistics.fmean(score_diffs), 5) if score_diffs else None,
        "same_images": same_images,
        "compared_detections": total,
    }


# -- 3: CPU decode vs GPU decode --------------------------------------------------------------------


def decode_comparison(p: Plan, uris: list[str], batch_size: int) -> dict:
    """Decode alone, the engine's two ways: Pillow on the decode threads, and `--decode-on-device`'s batches
    (device_decode.py); and how far the pixels differ."""
    blobs = [fetch_bytes(uri) for uri in uris]
    pin = p.device.type == "cuda"

    def cpu_decode(data: bytes) -> torch.Tensor:
        return host_tensor(decode_image(data, DEFAULT_MAX_PIXELS), pin)

    started = time.perf_counter()
    with ThreadPoolExecutor(p.decode_workers) as pool:
        cpu_images = list(pool.map(cpu_decode, blobs))
    cpu_s = time.perf_counter() - started

    encoded = [device_decodable(b, DEFAULT_MAX_PIXELS) for b in blobs]
    eligible = [e for e in encoded if e is not None]
    decode_batch(eligible[:batch_size], p.device)  # warm-up: nvJPEG's handles and buffers
    started = time.perf_counter()
    device_images, on_device = [], 0
    for i in range(0, len(eligible), batch_size):
        decoded = decode_batch(eligible[i : i + batch_size], p.device)
        device_images += decoded.images
        on_device += decoded.on_device
    synchronize(p.device)
    device_s = time.perf_counter() - started
    eligible_cpu = [image for image, e in zip(cpu_images, encoded, strict=True) if e is not None]
    pairs = list(zip(eligible_cpu, device_images, strict=True))  # the same file decoded both ways
    pixel_diff = statistics.fmean(
        float((a.to(torch.int16) - b.permute(1, 2, 0).cpu().to(torch.int16)).abs().float().mean())
        for a, b in pairs[:64]
    )
    return {
        "images": len(uris),
        "decode_device": str(p.device),
        "cpu_decode_threads": p.decode_workers,
        "cpu_decode_images_per_s": round(len(uris) / cpu_s, 1),
        "device_decodable": len(eligible),
        "decoded_on_device": on_device,
        "device_batch": batch_size,
        "gpu_decode_images_per_s": round(len(eligible) / device_s, 1),
        "mean_abs_pixel_diff": round(pixel_diff, 3),
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- 4: one shard end to end ------------------------------------------------------------------------


def shard_end_to_end(
    p: Plan,
    uris: list[str],
    workdir: Path,
    precision: str,
    batch_size: int,
    devices: str,
    on_device: bool = False,
) -> dict:
    """`python -m detection_engine` on one shard of all the images, timed from spawn to exit; `on_device`:
    with `--decode-on-device --prefetch-to-device`."""
    manifest = workdir / "shard.txt"
    manifest.write_text("\n".join(uris) + "\n")
    name = f"{precision}-{devices.replace(':', '').replace(',', '_')}{'-on-device' if on_device else ''}"
    summary = workdir / f"summary-{name}.json"
    command = [
        sys.executable,
        "-m",
        "detection_engine",
        f"--manifest={manifest}",
        f"--output-prefix={workdir / f'shard-{name}'}",
        "--run-id=bench_gpu",
        "--run-date=2026-11-21",
        "--shard-index=0",
        f"--model={MODEL}",
        f"--weights={p.weights}",
        f"--batch-size={batch_size}",
        f"--score-threshold={p.score_threshold}",
        f"--devices={devices}",
        f"--precision={precision}",
        f"--fetch-workers={p.fetch_workers}",
        f"--decode-workers={p.decode_workers}",
        f"--summary-path={summary}",
        f"--decode-on-device={str(on_device).lower()}",
        f"--prefetch-to-device={str(on_device).lower()}",
        *([f"--min-size={p.min_size}"] if p.min_size else []),
        *([f"--max-size={p.max_size}"] if p.max_size else []),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "inference_image")}
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    process_s = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"the engine failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(summary.read_text())
    metrics = json.loads((workdir / f"shard-{name}" / "metrics" / "shard-00000.json").read_text())
    devices_ran = json.loads(metrics["devices"])
    return {
        "devices": ", ".join(d["device"] for d in devices_ran),
        "decoded_on_device": sum(d.get("decoded_on_device", 0) for d in devices_ran),
        "fast_paths": ", ".join(
            k for k, v in json.loads(metrics["fast_paths"]).items() if v not in (False, "off")
        )
        or "none",
        "precision": precision,
        "ran_as": metrics["precision"],
        "batch_size": batch_size,
        "images": result["images"],
        "process_s": round(process_s, 2),
        "images_per_s_process": round(result["images"] / process_s, 1),
        "model_load_s": round(metrics["model_load_s"], 2),
        "images_per_s_data_path": round(metrics["images_per_s"], 1),
        "model_busy": round(metrics["model_busy_fraction"], 3),
        "gpu_utilization": metrics["gpu_utilization"],
    }


# -- report ----------------------------------------------------------------------------------------


def machine(p: Plan) -> dict:
    info = {
        "date": time.strftime("%Y-%m-%d"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "cpus": os.cpu_count(),
        "load_1min": load_average(),
    }
    if p.device.type == "cuda":
        props = torch.cuda.get_device_properties(p.device)
        info["gpu"] = f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
    return info


def markdown(report: dict) -> str:
    m, s = report["machine"], report["settings"]
    head = (
        f"{'SMOKE RUN ON CPU (says the script works, not how fast anything is). ' if s['smoke'] else ''}"
        f"{m['date']}; {m.get('gpu', 'no GPU')}; {m['cpus']} CPUs; torch {m['torch']} (CUDA {m['cuda']}), "
        f"torchvision {m['torchvision']}. {MODEL}, weights {s['weights']}, {s['images']} JPEGs "
        f"({'~100 px' if s['smoke'] else '480-1024 px'}), model size {s['min_size'] or 800}, "
        f"{s['fetch_workers']} fetch / {s['decode_workers']} decode threads; median of {s['runs']} runs."
    )
    grid = markdown_table(
        [
            "precision",
            "batch",
            "images/s",
            "model busy",
            "GPU util %",
            "peak MiB",
            "agreement F1 vs fp32",
            "same images",
            "mAP vs fp32 default",
        ],
        [
            [
                r["precision"] + ("" if r["ran_as"] == r["precision"] else f" (ran {r['ran_as']})"),
                _batch(r),
                r["images_per_s"],
                f"{r['model_busy']:.0%}",
                r["gpu_utilization"] if r["gpu_utilization"] is not None else "",
                r["peak_memory_mib"],
                _f1(r["agreement_with_fp32"]),
                f"{r['agreement_with_fp32']['same_images']}/{r['images']}"
                if r["agreement_with_fp32"]
                else "",
                _map_cell(r["map_vs_fp32_default"], TARGET_MAP[r["ran_as"]]),
            ]
            for r in report["grid"]
        ],
    )
    paths = markdown_table(
        [
            "fast path",
            "precision",
            "batch",
            "warm-up s (compiles)",
            "graphs compiled (warm-up, timed)",
            "images/s",
            "model busy",
            "mAP vs fp32 default",
        ],
        [
            [
                r["fast_path"],
                r["precision"],
                r["batch_size"],
                r["warm_up_s"],
                _graphs_cell(r),
                r["images_per_s"],
                f"{r['model_busy']:.0%}",
                _map_cell(r["map_vs_fp32_default"], r["target"]),
            ]
            for r in report["fast_paths"]
        ],
    )
    d = report["decode"]
    if d is None:
        decode_section = "Decode comparison: not run (time budget)."
    elif "error" in d:
        decode_section = f"Decode comparison failed: {d['error']}"
    else:
        decode_section = (
            f"Decode ({_gpu_decoder(d)} pixels differ from Pillow's by {d['mean_abs_pixel_diff']} of 255 on "
            "average):\n\n" + _decode_table(d)
        )
    shards = markdown_table(
        [
            "devices",
            "fast paths",
            "decoded on device",
            "precision",
            "batch",
            "images",
            "process s",
            "images/s (process)",
            "model load s",
            "images/s (data path)",
            "model busy",
        ],
        [
            [
                r["devices"],
                r["fast_paths"],
                r["decoded_on_device"],
                r["precision"] + ("" if r["ran_as"] == r["precision"] else f" (ran {r['ran_as']})"),
                r["batch_size"],
                r["images"],
                r["process_s"],
                r["images_per_s_process"],
                r["model_load_s"],
                r["images_per_s_data_path"],
                f"{r['model_busy']:.0%}",
            ]
            for r in report["shards"]
        ],
    )
    v = report["verdict"]
    judged = "Not judged (smoke run on CPU). " if s["smoke"] else ""
    end_to_end = (
        "not measured (no shard ran)"
        if v["images_per_s"] is None
        else f"{v['images_per_s']} ({'met' if v['images_per_s_met'] else 'missed'})"
    )
    verdict = judged + (
        f"Targets: model busy >= {TARGET_BUSY:.0%}: {v['model_busy']:.0%} at {v['config']} "
        f"({'met' if v['busy_met'] else 'missed'}); >= {TARGET_IMAGES_PER_S:.0f} images/s end to end at reduced "
        f"precision (a shard's data path: fetch, decode, inference, rows): {end_to_end}."
    )
    skipped = report.get("skipped") or []
    sections = ", ".join(f"{name} {seconds} s" for name, seconds in report.get("section_s", {}).items())
    incomplete = [] if report.get("complete", True) else ["INCOMPLETE: the run stopped before its end."]
    return "\n\n".join(
        [
            *incomplete,
            head,
            grid,
            "Fast paths, each alone at the auto batch (mAP: COCO box mAP against the fp32 default's detections, "
            "target >= 0.99 in fp32, >= 0.95 reduced):\n\n" + paths,
            decode_section,
            f"One shard end to end (`python -m detection_engine`):\n\n{shards}",
            verdict,
            *([f"Skipped for the time budget: {'; '.join(skipped)}."] if skipped else []),
            *([f"Wall time: {sections} ({report.get('elapsed_s')} s in all)."] if sections else []),
        ]
    )


def _graphs_cell(row: dict) -> str:
    if row.get("graphs_warm_up") is None:
        return ""
    timed = row["graphs_timed"]
    return f"{row['graphs_warm_up']}, {timed}" + (" (images/s include compiling)" if timed else "")


def _batch(row: dict) -> str:
    return f"auto ({row['batch_size']})" if row["batch"] == AUTO else str(row["batch_size"])


def _map_cell(value: float | None, target: float) -> str:
    if value is None:
        return "n/a (no reference detections)"
    return f"{value:.4f} ({'met' if value >= target else 'MISSED'} >= {target})"


def _decode_table(d: dict) -> str:
    return markdown_table(
        ["decode", "images", "images/s"],
        [
            [
                f"engine default: Pillow on {d['cpu_decode_threads']} CPU threads",
                d["images"],
                d["cpu_decode_images_per_s"],
            ],
            [
                f"--decode-on-device: {_gpu_decoder(d)}, batches of {d['device_batch']} "
                f"({d['decoded_on_device']} decoded there)",
                d["device_decodable"],
                d["gpu_decode_images_per_s"],
            ],
        ],
    )


def _gpu_decoder(d: dict) -> str:
    where = d["decode_device"]
    return "nvJPEG (decode_jpeg on cuda)" if where.startswith("cuda") else f"decode_jpeg on {where} (smoke)"


def _f1(result: dict | None) -> str:
    if result is None:
        return ""
    if result["f1"] is None:
        return "n/a (no detections)"
    return f"{result['f1']:.4f}"


def verdict(grid: list[dict], shards: list[dict]) -> dict:
    """The targets, judged at the fastest reduced-precision configuration."""
    reduced = [r for r in grid if r["precision"] != "fp32"] or grid
    best = max(reduced, key=lambda r: r["images_per_s"])
    data_path = max((s["images_per_s_data_path"] for s in shards), default=None)
    return {
        "config": f"{best['precision']} batch {best['batch_size']}",
        "model_busy": best["model_busy"],
        "busy_met": best["model_busy"] >= TARGET_BUSY,
        "images_per_s": data_path,  # None: no shard ran (the grid's figures are not end to end)
        "images_per_s_met": data_path is not None and data_path >= TARGET_IMAGES_PER_S,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_IMAGES} images, batches {' '.join(map(str, QUICK_BATCH_SIZES))}, one run (<= 6 min, one H200)",
    )
    parser.add_argument("--images", type=int, default=None, help="default 2048 (--quick: fewer)")
    parser.add_argument(
        "--batch-sizes", type=parse_batch_size, nargs="+", default=None, help="'auto' and/or sizes"
    )
    parser.add_argument(
        "--precisions", nargs="+", choices=["fp32", "fp16", "bf16"], default=["fp32", "fp16", "bf16"]
    )
    parser.add_argument("--runs", type=int, default=None, help="default 3 (--quick: 1)")
    parser.add_argument(
        "--weights", default=None, help="DEFAULT | fitted | state dict path | none (default: see above)"
    )
    parser.add_argument("--score-threshold", type=float, default=0.5)
    parser.add_argument(
        "--min-size", type=int, default=None, help="model input size (default: the model's 800)"
    )
    parser.add_argument("--max-size", type=int, default=None)
    parser.add_argument("--fetch-workers", type=int, default=None, help="default: the engine's")
    parser.add_argument("--decode-workers", type=int, default=None, help="default: the engine's")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time the --compile fast paths (each compiles at its warm-up: about a minute; --no-compile skips them)",
    )
    parser.add_argument(
        "--allow-cpu", action="store_true", help="without CUDA, run a tiny smoke version on CPU"
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help=f"seconds after which what is left is skipped and listed (default: {QUICK_BUDGET_S:.0f} with "
        "--quick, none otherwise; the fp32 reference row always runs)",
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument(
        "--tables-from",
        type=Path,
        default=None,
        help="print the tables of a JSON report written by --out (a whole run's, or what a cut-short run saved)",
    )
    args = parser.parse_args()
    if args.tables_from is not None:
        print(markdown(json.loads(args.tables_from.read_text())))
        return 0
    args.images = args.images or (QUICK_IMAGES if args.quick else 2048)
    args.batch_sizes = args.batch_sizes or (QUICK_BATCH_SIZES if args.quick else [AUTO, 1, 8, 16, 32])
    if AUTO not in args.batch_sizes:
        args.batch_sizes.insert(0, AUTO)  # the fp32 default: the reference for agreement
    args.runs = args.runs or (1 if args.quick else 3)
    if args.budget_s is None and args.quick:
        args.budget_s = QUICK_BUDGET_S
    if "fp32" not in args.precisions:
        args.precisions.insert(0, "fp32")  # the reference for agreement
    if not torch.cuda.is_available() and not args.allow_cpu:
        print(
            "bench_gpu: no CUDA device here; this benchmark measures a GPU. "
            "Run it on a CUDA machine, or pass --allow-cpu for a tiny smoke run that only shows the script works.",
            file=sys.stderr,
        )
        return 2

    budget = Budget(args.budget_s)
    p = plan(args)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    workdir.mkdir(parents=True, exist_ok=True)
    p = materialise_weights(p, workdir)
    print(f"bench_gpu: {'smoke run on CPU' if p.smoke else p.device}; workdir {workdir}", file=sys.stderr)
    images = write_images(workdir / "images", p.images, p.shapes, seed=0)
    uris = [str(path) for path in images.good]
    options = ModelOptions(
        MODEL,
        weights=p.weights,
        min_size=p.min_size,
        max_size=p.max_size,
        score_threshold=p.score_threshold,
        max_detections=50,
    )
    (loaded,) = load_replicas(options, [p.device])

    report = {
        "machine": machine(p),
        "settings": {
            "smoke": p.smoke,
            "images": p.images,
            "weights": p.weights,
            "min_size": p.min_size,
            "max_size": p.max_size,
            "runs": p.runs,
            "fetch_workers": p.fetch_workers,
            "decode_workers": p.decode_workers,
            "score_threshold": p.score_threshold,
            "budget_s": budget.seconds,
        },
        "grid": [],
        "fast_paths": [],
        "decode": None,
        "shards": [],
        "skipped": budget.skipped,
        "complete": False,
        "section_s": {},  # wall seconds of each section, to size the next lease's budget
    }

    def save(section: str | None = None, started: float | None = None) -> None:
        """The report so far, after each section: a run cut short by its lease still leaves its figures."""
        if section is not None and started is not None:
            report["section_s"][section] = round(time.perf_counter() - started, 1)
        report["elapsed_s"] = round(time.perf_counter() - budget.started, 1)
        report["verdict"] = verdict(report["grid"], report["shards"])
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n")

    report["section_s"]["setup"] = round(time.perf_counter() - budget.started, 1)  # weights, images, model
    started = time.perf_counter()
    report["grid"], found = throughput_grid(p, loaded, uris, budget)
    save("grid", started)
    grid = report["grid"]
    fastest = max([r for r in grid if r["precision"] != "fp32"] or grid, key=lambda r: r["images_per_s"])
    if budget.allows("decode comparison"):
        started = time.perf_counter()
        try:
            report["decode"] = decode_comparison(p, uris, fastest["batch_size"])
        except Exception as exc:  # e.g. a torchvision built without nvJPEG: keep the other figures
            report["decode"] = {"error": f"{type(exc).__name__}: {exc}"}
        save("decode", started)
    # The shards before the fast paths: end to end is the target's figure, the compiled rows the slowest.
    one_device = "cuda:0" if p.device.type == "cuda" else "cpu"
    several = p.device.type == "cuda" and torch.cuda.device_count() > 1
    started = time.perf_counter()
    for devices, on_device in [
        (one_device, False),
        ("auto", False),
        (one_device, True),
        *([("auto", True)] if several else []),
    ]:
        if budget.allows(f"shard on {devices}{' with the data-path switches' if on_device else ''}"):
            report["shards"].append(
                shard_end_to_end(
                    p, uris, workdir, fastest["precision"], fastest["batch_size"], devices, on_device
                )
            )
            save("shards", started)

    started = time.perf_counter()

    def save_fast_paths(rows: list[dict]) -> None:
        report["fast_paths"] = rows
        save("fast_paths", started)

    fast_paths(
        p,
        loaded,
        uris,
        found[("fp32", AUTO)],
        fastest,
        budget,
        compile=args.compile,
        after_row=save_fast_paths,
    )
    report["complete"] = True
    save()
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
