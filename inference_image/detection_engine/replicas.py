"""One model replica per device, fed by the shard's one fetch/decode pipeline.

The pipeline forms its batches exactly as with one device (same grouping, same sizes), so which batches a
shard runs never depends on how many devices it has. `Replicas.run` hands each batch to the replica with
the fewest batches in flight (then the fewest so far) and gives the outputs back in batch order, so results,
progress and batch records stay in run order. With one replica (and no prefetch) a batch runs on the
calling thread, as before; otherwise each replica runs its batches one at a time, in the order handed, on a
thread of its own.

With `prefetch_to_device` each replica also has a staging thread: a batch handed to a replica that is busy
is staged at once (`Detector.stage`: inputs copied, JPEGs decoded, onto the device; on CUDA on a stream of its
own) and runs when the batch before it is done, so the copies overlap the model. At most two batches per
replica are then in flight (one running, one staged), so memory stays bounded; a batch's latency is its turn
on the model, its staging time is not in it.
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
from detection_engine.inference import Detections, Detector, Failed, Staged
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

    def __init__(self, detectors: Sequence[Detector], prefetch_to_device: bool = False) -> None:
        if not detectors:
            raise ValueError("at least one detector is needed")
        self.detectors = list(detectors)
        self.prefetch_to_device = prefetch_to_device
        self.stats = [DeviceStats(str(d.device)) for d in self.detectors]

    @property
    def primary(self) -> Detector:
        return self.detectors[0]

    def run(
        self, batches: Iterable[list[T]], inputs: Callable[[list[T]], list[torch.Tensor]]
    ) -> Iterator[tuple[list[T], Outputs, float]]:
        """(batch, outputs, latency_s) per batch, in the order the batches came."""
        if len(self.detectors) == 1 and not self.prefetch_to_device:
            for batch in batches:
                outputs, latency = self._turn(0, batch, inputs, None)
                yield batch, outputs, latency
            return
        yield from self._run_queued(batches, inputs)

    def _call(self, replica: int, work: Callable[[], Outputs], images: int) -> tuple[Outputs, float]:
        detector = self.detectors[replica]
        decoded_before = detector.decoded_on_device
        started = time.perf_counter()
        outputs = work()
        latency = time.perf_counter() - started
        stats = self.stats[replica]
        stats.decoded_on_device += detector.decoded_on_device - decoded_before
        stats.images += images
        stats.batches += 1
        stats.busy_s += latency
        return outputs, latency

    def _turn(self, replica: int, batch: list[T], inputs, staged: Future[Staged] | None):
        detector = self.detectors[replica]
        if staged is None:
            return self._call(replica, lambda: detector(inputs(batch)), len(batch))
        ready = staged.result()  # staged on the replica's staging thread, while the batch before ran
        return self._call(replica, lambda: detector.run(ready), len(batch))

    def _run_queued(self, batches: Iterable[list[T]], inputs) -> Iterator[tuple[list[T], Outputs, float]]:
        count = len(self.detectors)
        depth = 2 if self.prefetch_to_device else 1  # batches in flight per replica: running (+ staged)
        pending: deque[tuple[list[T], Future, int]] = deque()
        assigned = [0] * count  # batches handed to each replica so far
        turns = [ThreadPoolExecutor(1, thread_name_prefix=f"replica{i}") for i in range(count)]
        staging = [ThreadPoolExecutor(1, thread_name_prefix=f"stage{i}") for i in range(count)]

        def finished_heads() -> Iterator[tuple[list[T], Outputs, float]]:
            while pending and pending[0][1].done():
                batch, future, _ = pending.popleft()
                outputs, latency = future.result()  # a replica's error fails the shard here
                yield batch, outputs, latency

        def in_flight(replica: int) -> int:
            return sum(1 for _, future, r in pending if r == replica and not future.done())

        try:
            for batch in batches:
                while True:
                    yield from finished_heads()
                    load = [in_flight(r) for r in range(count)]
                    free = sorted(
                        (r for r in range(count) if load[r] < depth), key=lambda r: (load[r], assigned[r])
                    )
                    if free and len(pending) < 2 * depth * count:
                        break
                    wait([f for _, f, _ in pending if not f.done()], return_when=FIRST_COMPLETED)
                replica = free[0]
                assigned[replica] += 1
                staged = None
                if self.prefetch_to_device:
                    staged = staging[replica].submit(self.detectors[replica].stage, inputs(batch))
                turn = turns[replica].submit(self._turn, replica, batch, inputs, staged)
                pending.append((batch, turn, replica))
            while pending:
                wait([pending[0][1]])
                yield from finished_heads()
        finally:
            for _, future, _ in pending:
                future.cancel()
            for pool in turns + staging:
                pool.shutdown(wait=True)
