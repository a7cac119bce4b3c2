"""One model replica per device, fed by the shard's one fetch/decode pipeline.

The pipeline forms its batches exactly as with one device (same grouping, same sizes), so which batches a
shard runs never depends on how many devices it has. `Replicas.run` hands each batch to the free replica
that has had the fewest and gives the outputs back in batch order, so results, progress and batch records
stay in run order. With one replica the batch runs on the calling thread, as before. Each replica is used
by one thread at a time, and at most two batches per replica are in flight, so memory stays bounded.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TypeVar

import torch

from detection_engine import fast_paths
from detection_engine.inference import Detections, Detector, Failed
from detection_engine.models import LoadedModel, ModelOptions, effective_precision, load_model

log = logging.getLogger(__name__)

T = TypeVar("T")
Outputs = list[Detections | Failed]


@dataclass
class DeviceStats:
    """What one replica did: the shard metrics' `devices` entries."""

    device: str
    images: int = 0
    batches: int = 0
    busy_s: float = 0.0
    decoded_on_device: int = 0  # of `images`, the JPEGs this device decoded (--decode-on-device)

    def as_metrics(self, wall_s: float) -> dict:
        busy = self.busy_s / wall_s if wall_s > 0 else None
        return {
            "device": self.device,
            "images": self.images,
            "batches": self.batches,
            "busy_fraction": busy,
            "decoded_on_device": self.decoded_on_device,
        }


def load_replicas(
    options: ModelOptions,
    devices: Sequence[torch.device],
    channels_last: bool = False,
    compile: bool = False,
) -> list[LoadedModel]:
    """The model loaded once (on the first device) and copied to the others; `load_s` is each one's share.

    The fast paths (fast_paths.py) are applied to each replica on its own device; each compiles its own
    backbone at its first batch.
    """
    first = load_model(dataclasses.replace(options, device=str(devices[0])))
    replicas = [first]
    for device in devices[1:]:
        started = time.perf_counter()
        model = copy.deepcopy(first.model).to(device)
        precision = effective_precision(options.precision, device)
        load_s = time.perf_counter() - started
        replicas.append(
            dataclasses.replace(first, model=model, device=device, precision=precision, load_s=load_s)
        )
    for replica in replicas:
        fast_paths.apply(replica.model, channels_last=channels_last, compile=compile)
    return replicas


def detectors_for(
    replicas: Sequence[LoadedModel], score_threshold: float, max_detections: int
) -> list[Detector]:
    return [Detector(r.model, r.device, r.precision, score_threshold, max_detections) for r in replicas]


class Replicas:
    """Runs batches over one or more `Detector`s, outputs in batch order, with per-device statistics."""

    def __init__(self, detectors: Sequence[Detector]) -> None:
        if not detectors:
            raise ValueError("at least one detector is needed")
        self.detectors = list(detectors)
        self.stats = [DeviceStats(str(d.device)) for d in self.detectors]

    @property
    def primary(self) -> Detector:
        return self.detectors[0]

    def run(
        self, batches: Iterable[list[T]], inputs: Callable[[list[T]], list[torch.Tensor]]
    ) -> Iterator[tuple[list[T], Outputs, float]]:
        """(batch, outputs, latency_s) per batch, in the order the batches came."""
        if len(self.detectors) == 1:
            for batch in batches:
                outputs, latency = self._call(0, batch, inputs)
                yield batch, outputs, latency
            return
        yield from self._run_parallel(batches, inputs)

    def _call(self, replica: int, batch: list[T], inputs) -> tuple[Outputs, float]:
        detector = self.detectors[replica]
        decoded_before = detector.decoded_on_device
        started = time.perf_counter()
        outputs = detector(inputs(batch))
        latency = time.perf_counter() - started
        stats = self.stats[replica]
        stats.decoded_on_device += detector.decoded_on_device - decoded_before
        stats.images += len(batch)
        stats.batches += 1
        stats.busy_s += latency
        return outputs, latency

    def _run_parallel(self, batches: Iterable[list[T]], inputs) -> Iterator[tuple[list[T], Outputs, float]]:
        count = len(self.detectors)
        pending: deque[tuple[list[T], Future, int]] = deque()
        assigned = [0] * count  # batches handed to each replica: a free replica with the fewest goes next
        pool = ThreadPoolExecutor(count, thread_name_prefix="replica")

        def finished_heads() -> Iterator[tuple[list[T], Outputs, float]]:
            while pending and pending[0][1].done():
                batch, future, _ = pending.popleft()
                outputs, latency = future.result()  # a replica's error fails the shard here
                yield batch, outputs, latency

        try:
            for batch in batches:
                while True:
                    yield from finished_heads()
                    busy = {replica for _, future, replica in pending if not future.done()}
                    free = sorted((i for i in range(count) if i not in busy), key=lambda i: assigned[i])
                    if free and len(pending) < 2 * count:
                        break
                    wait([f for _, f, _ in pending if not f.done()], return_when=FIRST_COMPLETED)
                replica = free[0]
                assigned[replica] += 1
                pending.append((batch, pool.submit(self._call, replica, batch, inputs), replica))
            while pending:
                wait([pending[0][1]])
                yield from finished_heads()
        finally:
            for _, future, _ in pending:
                future.cancel()
            pool.shutdown(wait=True)
