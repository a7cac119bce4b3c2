"""One batch through the model: device copy, autocast (box coordinates kept in fp32: box_precision.py),
inference mode, threshold and cap, OOM halving.

With `--prefetch-to-device` a batch is staged (`Detector.stage`: its inputs copied, and JPEGs decoded, onto
the device) while the batch before it runs (`Detector.run`); on CUDA staging runs on a stream of its own, so
the copies overlap the model's kernels. Without it, `Detector.__call__` does both in turn, as before.

torchvision detectors already map boxes back to each input image's pixels; what is left here is the engine's
score threshold and detection cap, applied on the device before one copy back to the host per tensor.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from detection_engine.box_precision import keep_boxes_in_fp32
from detection_engine.decode import ImageError, redact
from detection_engine.preprocess import HostImage, ModelInputs, model_inputs

log = logging.getLogger(__name__)

_AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}

Model = Callable[[list[torch.Tensor]], list[dict[str, torch.Tensor]]]


@dataclass(frozen=True)
class Detections:
    """One image's detections, best first, boxes as x1, y1, x2, y2 in the original image's pixels."""

    boxes: np.ndarray  # (n, 4) float32
    scores: np.ndarray  # (n,) float32
    labels: np.ndarray  # (n,) int64

    def __len__(self) -> int:
        return len(self.scores)


@dataclass(frozen=True)
class Failed:
    """An image with no detections to give: it does not fit in device memory even alone, the model raised on
    it alone, or (decoded on the device) neither decoder could read it."""

    reason: str


@dataclass
class Staged:
    """A batch staged ahead of its turn: its inputs on the device (ready once `ready` has fired on CUDA), or
    none when staging failed (out of memory, say): its turn then prepares them itself, halving as it must."""

    images: list[HostImage]
    inputs: ModelInputs | None = None
    ready: object | None = None  # a torch.cuda.Event recorded on the staging stream


class Detector:
    """Runs batches of host images (HxWx3 uint8 tensors, or JPEGs for the device to decode) through a
    loaded detector.

    A CUDA out-of-memory error on a batch retries it as two halves, recursively; an image that does not fit
    even alone becomes `Failed`, so one huge image costs one error row, not the shard.
    """

    def __init__(
        self,
        model: Model,
        device: torch.device,
        precision: str = "fp32",
        score_threshold: float = 0.5,
        max_detections: int = 50,
    ) -> None:
        self.model = model
        self.device = device
        self.precision = precision
        if precision in _AUTOCAST_DTYPES and isinstance(model, torch.nn.Module):
            keep_boxes_in_fp32(model)  # reduced precision for the convolutions, not for coordinates
        self.score_threshold = score_threshold
        self.max_detections = max_detections
        self.oom_splits = 0
        self.decoded_on_device = 0  # JPEGs whose pixels the device decoded (--decode-on-device)
        self._staging_stream = None  # CUDA: created by the first stage() call, on the staging thread's device

    def __call__(self, images: Sequence[HostImage]) -> list[Detections | Failed]:
        with torch.inference_mode():
            return self._run(list(images))

    def stage(self, images: Sequence[HostImage]) -> Staged:
        """The batch's inputs prepared on the device ahead of its turn, without touching the model. Called
        from one staging thread per replica; anything it cannot do is left to `run`, never raised."""
        images = list(images)
        try:
            with torch.inference_mode():
                if self.device.type != "cuda":
                    return Staged(images, model_inputs(images, self.device))
                if self._staging_stream is None:
                    self._staging_stream = torch.cuda.Stream(device=self.device)
                with torch.cuda.stream(self._staging_stream):
                    inputs = model_inputs(images, self.device)
                    ready = torch.cuda.Event()
                    ready.record(self._staging_stream)
                return Staged(images, inputs, ready)
        except torch.OutOfMemoryError:
            log.warning("out of memory staging a batch of %d images; its turn prepares it", len(images))
        except Exception as exc:
            if _systemic(exc):
                raise
            log.warning("staging a batch raised %s; its turn prepares it", type(exc).__name__)
        return Staged(images)  # the turn meets the problem again, per image or by halving

    def run(self, staged: Staged) -> list[Detections | Failed]:
        """A staged batch's turn on the model: as `__call__`, starting from the staged inputs."""
        with torch.inference_mode():
            if staged.inputs is not None and staged.ready is not None:
                current = torch.cuda.current_stream(self.device)
                current.wait_event(staged.ready)
                for tensor in staged.inputs.images:
                    if isinstance(tensor, torch.Tensor):
                        tensor.record_stream(current)  # made on the staging stream, used on this one
            return self._run(staged.images, staged)

    def refusal(self, width: int, height: int) -> str | None:
        """`too_thin: ...` when the model's own resize would leave a side of 0 px (its interpolate raises)."""
        shape = resized_shape(getattr(self.model, "transform", None), height, width)
        if shape is None or min(shape) >= 1:
            return None
        return f"too_thin: {width}x{height} resizes to {shape[1]}x{shape[0]} px for this model"

    def _run(self, images: list[HostImage], staged: Staged | None = None) -> list[Detections | Failed]:
        prepared = None
        if staged is not None:  # take the staged inputs, so that ours is their last reference
            prepared, staged.inputs = staged.inputs, None
        try:
            return self._forward(images, prepared)
        except torch.OutOfMemoryError:
            pass  # retried below, outside the handler, so the failed attempt's tensors are freed first
        except Exception as exc:
            if _systemic(exc):
                raise  # the device or the process, not an image: fail the shard (retried)
            return self._bisect(images, exc)
        prepared = None  # halves are prepared afresh
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if len(images) == 1:
            height, width = images[0].shape[:2]
            return [Failed(f"out_of_memory: a {width}x{height} image does not fit on {self.device} alone")]
        self.oom_splits += 1
        half = (len(images) + 1) // 2
        log.warning(
            "out of memory on a batch of %d images; retrying as %d + %d",
            len(images),
            half,
            len(images) - half,
        )
        return self._run(images[:half]) + self._run(images[half:])

    def _bisect(self, images: list[HostImage], exc: Exception) -> list[Detections | Failed]:
        """A batch that raised: run its halves, down to the image(s) that raise alone."""
        if len(images) == 1:
            return [Failed(f"model_error: {redact(f'{type(exc).__name__}: {exc}')}")]
        half = (len(images) + 1) // 2
        log.warning("a batch of %d images raised %s; bisecting", len(images), type(exc).__name__)
        return self._run(images[:half]) + self._run(images[half:])

    def _forward(self, images: list[HostImage], prepared: ModelInputs | None) -> list[Detections | Failed]:
        prepared = prepared if prepared is not None else model_inputs(images, self.device)
        ready = [x for x in prepared.images if not isinstance(x, ImageError)]
        outputs = iter(self._model(ready) if ready else [])
        self.decoded_on_device += prepared.decoded_on_device  # counted once the batch has run (no retry)
        return [
            Failed(x.reason) if isinstance(x, ImageError) else self._postprocess(next(outputs))
            for x in prepared.images
        ]

    def _model(self, inputs: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        dtype = _AUTOCAST_DTYPES.get(self.precision)
        autocast = (
            torch.autocast(device_type=self.device.type, dtype=dtype)
            if dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            return self.model(inputs)

    def _postprocess(self, output: dict[str, torch.Tensor]) -> Detections:
        scores = output["scores"].float()
        keep = torch.nonzero(scores > self.score_threshold).flatten()
        # torchvision returns detections sorted by score; a stable sort keeps its order for ties.
        order = torch.sort(scores[keep], descending=True, stable=True).indices[: self.max_detections]
        keep = keep[order]
        return Detections(
            boxes=output["boxes"][keep].float().cpu().numpy(),
            scores=scores[keep].cpu().numpy(),
            labels=output["labels"][keep].cpu().numpy().astype(np.int64),
        )


# Errors after which the device (or process) cannot be trusted for any image: CUDA context faults.
_SYSTEMIC_MARKERS = (
    "illegal memory access",
    "device-side assert",
    "CUDA error",
    "CUBLAS_STATUS",
    "cuDNN error",
    "NCCL",
    "device lost",
    "unspecified launch failure",
)


def _systemic(exc: Exception) -> bool:
    if isinstance(exc, MemoryError) or type(exc).__name__ == "AcceleratorError":
        return True
    return any(marker in str(exc) for marker in _SYSTEMIC_MARKERS)


def resized_shape(transform, height: int, width: int) -> tuple[int, int] | None:
    """(height, width) after torchvision's GeneralizedRCNNTransform resize in eval mode, computed as it does
    (scale = min(min_size / short side, max_size / long side), interpolate floors size * scale); None for a
    model without that transform. SSD's fixed size never yields 0 px."""
    if transform is None or not hasattr(transform, "min_size"):
        return None
    fixed = getattr(transform, "fixed_size", None)
    if fixed is not None:
        return (int(fixed[1]), int(fixed[0]))
    size = float(transform.min_size[-1])
    scale = min(size / min(height, width), float(transform.max_size) / max(height, width))
    return (math.floor(height * scale), math.floor(width * scale))
