"""The shard's metrics object (exactly the keys of schema.SHARD_METRICS): timings, counts, device, versions.

These are the figures the run record aggregates into throughput, latency and cost, so each says what it
measures: `infer_s` is the time the models were busy (summed over replicas), `model_busy_fraction` how much
of the post-load wall time that was per replica (1.0 means I/O never made a model wait), and `devices` lists
each replica: device, images, batches, busy fraction of the data path's wall time.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import socket
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import date, datetime

import numpy as np
import psutil
import torch
import torchvision

from detection_engine import schema
from detection_engine.models import LoadedModel
from detection_engine.pipeline import PipelineOutcome

CONTAINER_IMAGE_ENV = "DETECTION_CONTAINER_IMAGE"
METRIC_KEYS = schema.column_names(schema.SHARD_METRICS)


def error_code(reason: str) -> str:
    """`not_found: gs://b/x.jpg` -> `not_found`: reasons are `<code>: <detail>`."""
    return reason.split(":", 1)[0].strip()


def error_counts(reasons: Iterable[str | None]) -> dict[str, int]:
    return dict(sorted(Counter(error_code(r) for r in reasons if r is not None).items()))


def latency_ms(latencies_s: Sequence[float], q: float) -> float | None:
    return float(np.percentile(latencies_s, q) * 1000.0) if latencies_s else None


def device_info(device: torch.device) -> dict:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"device": "cuda", "device_name": props.name, "device_memory_gb": props.total_memory / 1e9}
    return {
        "device": "cpu",
        "device_name": _cpu_name(),
        "device_memory_gb": psutil.virtual_memory().total / 1e9,
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} x{os.cpu_count()}"


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated by torch, or the process's peak resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e6
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # Linux reports KiB


def software_versions() -> dict:
    return {
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "cuda_version": torch.version.cuda,
        "container_image": os.environ.get(CONTAINER_IMAGE_ENV) or None,
        "hostname": socket.gethostname(),
    }


class UtilizationSampler:
    """Mean GPU utilisation (NVML, through torch.cuda.utilization) sampled on a thread while the shard runs,
    averaged over the shard's CUDA devices (one replica each).

    `mean` stays None on CPU, or where NVML is unavailable (no nvidia-ml-py, no driver library).
    """

    def __init__(self, device: torch.device | Sequence[torch.device], interval_s: float = 1.0) -> None:
        devices = [device] if isinstance(device, torch.device) else list(device)
        self._cuda = list(dict.fromkeys(d for d in devices if d.type == "cuda"))
        self._interval_s = interval_s
        self._samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> UtilizationSampler:
        if self._cuda and self._sample():
            self._thread = threading.Thread(target=self._loop, name="gpu-utilization", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _sample(self) -> bool:
        try:
            self._samples.append(float(np.mean([torch.cuda.utilization(d) for d in self._cuda])))
            return True
        except Exception:
            return False

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._sample()

    @property
    def mean(self) -> float | None:
        return float(np.mean(self._samples)) if self._samples else None


def shard_metrics(
    *,
    run_id: str,
    run_date: date,
    shard_index: int,
    outcome: PipelineOutcome,
    loaded: LoadedModel,
    started_at: datetime,
    finished_at: datetime,
    wall_s: float,
    gpu_utilization: float | None,
    resumed_errors: Sequence[str | None] = (),
    attempt: int = 1,
    preemptions: int = 0,
    earlier_attempts_s: float = 0.0,
    fast_paths: dict | None = None,
) -> dict:
    """Counts cover the whole shard (`resumed_errors`: the error of each image earlier attempts committed);
    timings, batches and images/s cover the work of this attempt."""
    reasons = [r.error for r in outcome.results] + list(resumed_errors)
    failed = sum(reason is not None for reason in reasons)
    images = len(reasons)
    replicas = max(1, len(outcome.devices))
    busy_window_s = (wall_s - loaded.load_s) * replicas
    metrics = {
        "run_id": run_id,
        "run_date": run_date.isoformat(),
        "shard_index": shard_index,
        "images": images,
        "ok": images - failed,
        "failed": failed,
        "started_at": started_at.isoformat(),
        "finished_at": finished_at.isoformat(),
        "wall_s": wall_s,
        "model_load_s": loaded.load_s,
        "fetch_s": outcome.fetch_s,
        "decode_s": outcome.decode_s,
        "infer_s": outcome.infer_s,
        "model_busy_fraction": outcome.infer_s / busy_window_s if busy_window_s > 0 else None,
        "batches": len(outcome.batches),
        "batch_size": outcome.batch_size,
        "batch_latency_p50_ms": latency_ms(outcome.batch_latencies_s, 50),
        "batch_latency_p95_ms": latency_ms(outcome.batch_latencies_s, 95),
        "batch_latency_max_ms": latency_ms(outcome.batch_latencies_s, 100),
        # Throughput of the data path, model load excluded (wall_s and model_load_s give the rest).
        "images_per_s": len(outcome.results) / outcome.wall_s if outcome.wall_s > 0 else None,
        **device_info(loaded.device),
        "peak_memory_mb": peak_memory_mb(loaded.device),
        "gpu_utilization": gpu_utilization,
        "precision": loaded.precision,
        **software_versions(),
        "model_name": loaded.spec.name,
        "weights_id": loaded.weights_id,
        "weights_sha256": loaded.weights_sha256,
        "random_weights": loaded.random_weights,
        "error_counts": json.dumps(error_counts(reasons)),
        "attempt": attempt,
        "resumed_images": len(resumed_errors),
        "preemptions": preemptions,
        "earlier_attempts_s": earlier_attempts_s,
        "devices": json.dumps(outcome.devices),
        "fast_paths": json.dumps(fast_paths or {}),
    }
    if set(metrics) != set(METRIC_KEYS):
        raise AssertionError(
            f"metrics keys drifted from schema.SHARD_METRICS: {set(metrics) ^ set(METRIC_KEYS)}"
        )
    return {key: metrics[key] for key in METRIC_KEYS}
