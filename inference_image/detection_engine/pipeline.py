"""The shard's data path: fetch and decode run ahead of the model, batches of similar shapes, one result per URI.

    URIs ──► fetch pool ──► decode pool ──► ordered, bounded look-ahead ──► grouping window ──► Detector
                 (I/O)         (CPU)         (prefetch_batches x batch)     (similar aspect ratios)

With `decode_on_device`, the decode pool only reads the headers of the JPEGs the device can decode
(device_decode.py) and the Detector decodes them, a batch at a time, where the model runs. With
`prefetch_to_device`, each replica stages its next batch on the device while it runs the one before
(replicas.py).

Loads are consumed in manifest order with at most `prefetch_batches * batch_size` in flight, so memory stays
bounded and a re-run forms the same batches (detections depend slightly on a batch's padding). Images that
fail to fetch or decode never enter a batch: they become error results right away.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

from detection_engine.auto_batch import AUTO, choose_batch_size
from detection_engine.cpus import usable_cpus
from detection_engine.decode import DEFAULT_MAX_PIXELS, ImageError, decode_or_error
from detection_engine.device_decode import device_decodable
from detection_engine.fetch import fetch_bytes
from detection_engine.inference import Detections, Detector, Failed
from detection_engine.preprocess import HostImage, host_tensor
from detection_engine.replicas import Replicas
from detection_engine.storage import DEFAULT_LIMITS, ReadLimits


@dataclass(frozen=True)
class PipelineOptions:
    batch_size: int | str = AUTO  # auto_batch.py's rule, resolved per run on its devices
    # A read waits on a round trip, so a shard is fed at most ~fetch_workers / latency images/s: 32 threads at
    # GCS's ~40 ms is ~800/s, twice the GPU target (8 capped it at ~200: bench/bench_fetch.py). Threads that
    # wait cost little; at most batch x prefetch_batches reads are in flight whatever the number.
    fetch_workers: int = 32
    decode_workers: int = field(default_factory=usable_cpus)  # a pod passes its CPU request instead
    prefetch_batches: int = 3
    group_window: int = 4  # batches' worth of decoded images searched for similar shapes; 1 = arrival order
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    read_limits: ReadLimits = field(default_factory=ReadLimits)
    decode_on_device: bool = False  # a fast path (device_decode.py), off until measured
    prefetch_to_device: bool = False  # a fast path: each batch staged on the device while the one before runs


class Stopped(Exception):
    """`run_pipeline` was asked to stop (a clean stop on SIGTERM); every finished image went to `on_result`."""


@dataclass
class Loaded:
    """One input after fetch and decode: a host image ready for the model, or the reason it failed."""

    index: int
    uri: str
    tensor: HostImage | None = None  # HxWx3 uint8, or a JPEG the device decodes (with its header's size)
    error: str | None = None
    fetch_s: float | None = None
    decode_s: float | None = None  # for a JPEG left to the device: its header check only

    @property
    def width(self) -> int:
        return int(self.tensor.shape[1]) if self.tensor is not None else 0

    @property
    def height(self) -> int:
        return int(self.tensor.shape[0]) if self.tensor is not None else 0


@dataclass
class ImageResult:
    uri: str
    error: str | None
    width: int | None = None
    height: int | None = None
    detections: Detections | None = None
    fetch_s: float | None = None
    decode_s: float | None = None
    infer_s: float | None = None  # the image's share of its batch's time


@dataclass
class PipelineOutcome:
    results: list[ImageResult]  # in manifest order, one per URI
    batches: list[list[int]] = field(default_factory=list)  # manifest indices of each batch, in run order
    batch_latencies_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    batch_size: int = 0  # the size the batches were formed at (options.batch_size resolved)
    devices: list[dict] = field(default_factory=list)  # per replica: device, images, batches, busy_fraction

    @property
    def infer_s(self) -> float:
        return sum(self.batch_latencies_s)

    @property
    def fetch_s(self) -> float:
        return sum(r.fetch_s or 0.0 for r in self.results)

    @property
    def decode_s(self) -> float:
        return sum(r.decode_s or 0.0 for r in self.results)


class Loader:
    """Fetch (I/O-bound, many threads) chained into decode (CPU-bound, few threads); never raises per image."""

    def __init__(
        self,
        fetch_workers: int,
        decode_workers: int,
        max_pixels: int,
        pin_memory: bool,
        limits: ReadLimits = DEFAULT_LIMITS,
        decode_on_device: bool = False,
    ) -> None:
        self.limits = limits
        self._decode_on_device = decode_on_device
        self._fetch_pool = ThreadPoolExecutor(fetch_workers, thread_name_prefix="fetch")
        self._decode_pool = ThreadPoolExecutor(decode_workers, thread_name_prefix="decode")
        self._max_pixels = max_pixels
        self._pin = pin_memory

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc) -> None:
        # A read past its deadline has its error row already; its thread ends at its own bounds, unwaited.
        self._fetch_pool.shutdown(wait=False, cancel_futures=True)
        self._decode_pool.shutdown(wait=False, cancel_futures=True)

    def submit(self, index: int, uri: str) -> Future[Loaded]:
        done: Future[Loaded] = Future()

        def decode_when_fetched(fetched: Future[tuple[Loaded, bytes | None]]) -> None:
            try:
                item, data = fetched.result()
                if data is None:
                    done.set_result(item)
                else:
                    decoding = self._decode_pool.submit(self._decode, item, data)
                    decoding.add_done_callback(lambda f: _copy_outcome(f, done))
            except BaseException as exc:  # a pool shut down under us: surface it, never hang the consumer
                done.set_exception(exc)

        self._fetch_pool.submit(self._fetch, index, uri).add_done_callback(decode_when_fetched)
        return done

    def _fetch(self, index: int, uri: str) -> tuple[Loaded, bytes | None]:
        started = time.perf_counter()
        item = Loaded(index, uri)
        data = None
        try:
            data = fetch_bytes(uri, self.limits)
        except ImageError as exc:
            item.error = exc.reason
        except MemoryError:
            raise  # the process, not the image: fail the shard
        except Exception as exc:  # fetch maps what it knows; anything else is still one error row
            item.error = ImageError("fetch_error", f"{type(exc).__name__}: {exc}").reason
        item.fetch_s = time.perf_counter() - started
        return item, data

    def _decode(self, item: Loaded, data: bytes) -> Loaded:
        started = time.perf_counter()
        if self._decode_on_device:
            item.tensor = device_decodable(data, self._max_pixels)
            if item.tensor is not None:
                item.decode_s = time.perf_counter() - started
                return item
        image = decode_or_error(data, self._max_pixels)
        if isinstance(image, ImageError):
            item.error = image.reason
        else:
            item.tensor = host_tensor(image, self._pin)
        item.decode_s = time.perf_counter() - started
        return item


def _copy_outcome(source: Future, target: Future) -> None:
    if source.exception() is not None:
        target.set_exception(source.exception())
    else:
        target.set_result(source.result())


_GRACE_S = 5.0  # beyond the read's own deadline, for its decode


def load_in_order(uris: Sequence[str], loader: Loader, max_in_flight: int) -> Iterator[Loaded]:
    """Loads in manifest order, keeping up to `max_in_flight` fetches/decodes running ahead of the consumer."""
    pending: deque[tuple[int, str, Future[Loaded]]] = deque()
    upcoming = iter(enumerate(uris))
    for index, uri in upcoming:
        pending.append((index, uri, loader.submit(index, uri)))
        if len(pending) >= max_in_flight:
            break
    # The reads bound themselves; this is the backstop that keeps one stuck image from stalling the shard.
    wait_s = getattr(loader, "limits", DEFAULT_LIMITS).timeout_s + _GRACE_S
    while pending:
        index, uri, future = pending.popleft()
        try:
            item = future.result(timeout=wait_s)
        except FutureTimeout:
            item = Loaded(
                index, uri, error=ImageError("timeout", f"not fetched and decoded in {wait_s:g} s").reason
            )
        following = next(upcoming, None)
        if following is not None:
            pending.append((*following, loader.submit(*following)))
        yield item


def _aspect(item: Loaded) -> float:
    return math.log(item.width / item.height)


def group_batches(items: Iterable[Loaded], batch_size: int, window: int) -> Iterator[list[Loaded]]:
    """Batches of `batch_size`, each the oldest waiting image plus the waiting images closest to it in aspect
    ratio, searched over a window of `window` images (torchvision pads a batch to its largest resized image,
    and images of one aspect ratio resize to one shape). At most `window` images wait, and the oldest always
    leaves in the next batch, so none is passed over for long. `window <= batch_size` keeps arrival order.
    """
    waiting: list[Loaded] = []
    for item in items:
        waiting.append(item)
        if len(waiting) >= max(window, batch_size):
            yield _take_batch(waiting, batch_size)
    while waiting:
        yield _take_batch(waiting, batch_size)


def _take_batch(waiting: list[Loaded], batch_size: int) -> list[Loaded]:
    oldest = _aspect(waiting[0])
    # sorted() is stable: among equally close images, earlier arrivals go first.
    chosen = sorted(range(len(waiting)), key=lambda i: abs(_aspect(waiting[i]) - oldest))[:batch_size]
    chosen_set = set(chosen)
    batch = [waiting[i] for i in sorted(chosen)]
    waiting[:] = [item for i, item in enumerate(waiting) if i not in chosen_set]
    return batch


def run_pipeline(
    uris: Sequence[str],
    detector: Detector | Sequence[Detector],
    options: PipelineOptions,
    on_progress: Callable[[int], None] | None = None,
    on_result: Callable[[ImageResult], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> PipelineOutcome:
    """Every URI in, exactly one `ImageResult` per URI out, in manifest order; one replica per detector."""
    started = time.perf_counter()
    replicas = Replicas(
        list(detector) if isinstance(detector, Sequence) else [detector], options.prefetch_to_device
    )
    detector = replicas.primary  # refusals depend on the model, the same on every replica
    batch_size = choose_batch_size(options.batch_size, replicas.detectors)
    results: list[ImageResult | None] = [None] * len(uris)
    outcome = PipelineOutcome(results=[], batch_size=batch_size)
    done = 0

    def report(count: int) -> None:
        nonlocal done
        done += count
        if on_progress is not None:
            on_progress(done)

    def finished(index: int, result: ImageResult) -> None:
        results[index] = result
        if on_result is not None:
            on_result(result)

    def decoded(stream: Iterable[Loaded]) -> Iterator[Loaded]:
        for item in stream:
            refusal = detector.refusal(item.width, item.height) if item.error is None else None
            if item.error is None and refusal is None:
                yield item
            else:
                sized = {"width": item.width, "height": item.height} if refusal else {}
                finished(
                    item.index,
                    ImageResult(
                        item.uri, item.error or refusal, fetch_s=item.fetch_s, decode_s=item.decode_s, **sized
                    ),
                )
                report(1)

    window = batch_size * max(1, options.group_window)
    max_in_flight = batch_size * max(1, options.prefetch_batches) * len(replicas.detectors)
    pin = any(d.device.type == "cuda" for d in replicas.detectors)
    loader = Loader(
        options.fetch_workers,
        options.decode_workers,
        options.max_image_pixels,
        pin,
        options.read_limits,
        options.decode_on_device,
    )
    with loader:
        stream = decoded(load_in_order(uris, loader, max_in_flight))
        batches = group_batches(stream, batch_size, window)
        for batch, outputs, latency in replicas.run(batches, lambda b: [item.tensor for item in b]):
            for item, output in zip(batch, outputs, strict=True):
                finished(item.index, _result(item, output, latency / len(batch)))
            outcome.batches.append([item.index for item in batch])
            outcome.batch_latencies_s.append(latency)
            report(len(batch))
            if stop is not None and stop():  # SIGTERM: take no more batches; what is finished is handed on
                raise Stopped(f"stopped after {done} of {len(uris)} images")

    missing = [uris[i] for i, r in enumerate(results) if r is None]
    if missing:  # an invariant, not an input error: fail the shard rather than write a short file
        raise RuntimeError(f"{len(missing)} images have no result, e.g. {missing[0]}")
    outcome.results = results  # type: ignore[assignment]
    outcome.wall_s = time.perf_counter() - started
    outcome.devices = [stats.as_metrics(outcome.wall_s) for stats in replicas.stats]
    return outcome


def _result(item: Loaded, output: Detections | Failed, infer_s: float) -> ImageResult:
    common = {
        "width": item.width,
        "height": item.height,
        "fetch_s": item.fetch_s,
        "decode_s": item.decode_s,
        "infer_s": infer_s,
    }
    if isinstance(output, Failed):
        return ImageResult(item.uri, output.reason, **common)
    return ImageResult(item.uri, None, detections=output, **common)
