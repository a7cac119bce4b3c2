"""`--batch-size auto`: the batch size the shard runs at when none is given (an explicit size always wins).

- CPU: 1. Measured on a 2-core VM (BENCHMARKS.md): batch 1 is the fastest and the only size whose detections
  equal the one-image loop's, because torchvision pads every image of a batch to the batch's largest one.
- CUDA: the largest power of two, at most `MAX_GPU_BATCH`, whose estimated activations fit in half of the
  free memory of the smallest of the shard's devices after the model is loaded. The estimate is
  `bytes_per_pixel(precision) x` the largest input the model's transform can produce (min_size x max_size,
  or SSD's fixed size). The constants are estimates for Faster R-CNN R50-FPN, to be replaced by
  bench/bench_gpu.py's measured fastest batch once a GPU row exists.

Every replica runs at the same size, so a shard's batches do not depend on how many devices it has.

No timing probe at shard start, by design: the batch size sets the padding and so, slightly, the detections;
a size picked from timings would follow timing noise, so a retried shard (or its neighbour in the same run)
could give other detections for the same image. Memory is the same for every attempt on the same GPU type.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

AUTO = "auto"
CPU_BATCH = 1
MAX_GPU_BATCH = 32
FREE_MEMORY_SHARE = 0.5
# Peak activation bytes per input pixel of one image at inference (ResNet-50-FPN features + RPN + RoI heads).
BYTES_PER_PIXEL = {"fp32": 1000, "fp16": 600, "bf16": 600}
_TORCHVISION_DEFAULT_PIXELS = 800 * 1333


def parse_batch_size(text: str | int) -> int | str:
    """`"auto"` or an integer >= 1 (as int); anything else raises ValueError with the line the user sees."""
    if isinstance(text, str) and text.strip().lower() == AUTO:
        return AUTO
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise ValueError(f"must be 'auto' or an integer >= 1, got {text!r}") from None
    if value < 1:
        raise ValueError(f"must be 'auto' or an integer >= 1, got {value}")
    return value


def choose_batch_size(requested: int | str, detectors: Sequence) -> int:
    """The batch size for `requested` (an int wins as is) on these detectors' devices."""
    if requested != AUTO:
        return int(requested)
    cuda = [d for d in detectors if d.device.type == "cuda"]
    if not cuda:
        return CPU_BATCH
    free = min(torch.cuda.mem_get_info(d.device)[0] for d in cuda)
    per_image = BYTES_PER_PIXEL.get(cuda[0].precision, BYTES_PER_PIXEL["fp32"]) * max_input_pixels(
        getattr(cuda[0].model, "transform", None)
    )
    return gpu_batch_size(free, per_image)


def gpu_batch_size(free_bytes: int, per_image_bytes: int) -> int:
    """The largest power of two in [1, MAX_GPU_BATCH] whose images fit in FREE_MEMORY_SHARE of free_bytes."""
    fits = int(free_bytes * FREE_MEMORY_SHARE // max(1, per_image_bytes))
    batch = 1
    while batch * 2 <= min(fits, MAX_GPU_BATCH):
        batch *= 2
    return batch


def max_input_pixels(transform) -> int:
    """The most pixels one resized input can have under the model's GeneralizedRCNNTransform."""
    if transform is None or not hasattr(transform, "min_size"):
        return _TORCHVISION_DEFAULT_PIXELS
    fixed = getattr(transform, "fixed_size", None)
    if fixed is not None:
        return int(fixed[0]) * int(fixed[1])
    return int(max(transform.min_size)) * int(transform.max_size)
