"""Decoded images to model input, split so the cheap host part runs in the loader threads.

The host part copies the decoder's HxWx3 uint8 array once, into pinned memory when a CUDA copy follows (so
that copy is asynchronous); the device part moves uint8 (4x fewer bytes than float) and converts there, exactly
as `torchvision.transforms.functional.to_tensor` does, so results match torchvision's own preprocessing bit for
bit. JPEGs left encoded for the device (`--decode-on-device`, device_decode.py) are decoded there first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from detection_engine.decode import ImageError
from detection_engine.device_decode import EncodedJpeg, decode_batch

HostImage = torch.Tensor | EncodedJpeg  # HxWx3 uint8 pixels, or a JPEG the device decodes


def host_tensor(image: np.ndarray, pin: bool) -> torch.Tensor:
    """HxWx3 uint8 array -> HxWx3 uint8 tensor of its own (the decoder's arrays are read-only)."""
    tensor = torch.empty(image.shape, dtype=torch.uint8, pin_memory=pin)
    tensor.numpy()[...] = image
    return tensor


def model_input(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """HxWx3 uint8 -> 3xHxW float in [0, 1] on `device`."""
    return _scaled(tensor.to(device, non_blocking=True).permute(2, 0, 1))


def _scaled(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.contiguous().to(torch.float32).div(255)


@dataclass
class ModelInputs:
    """One batch's model inputs: per image 3xHxW float on the device, or the `ImageError` of a JPEG that
    neither the device nor the CPU could decode; and how many JPEGs the device decoded."""

    images: list[torch.Tensor | ImageError]
    decoded_on_device: int


def model_inputs(images: Sequence[HostImage], device: torch.device) -> ModelInputs:
    """A batch of host images -> model inputs; the encoded JPEGs among them decoded in one device call."""
    encoded = [i for i, image in enumerate(images) if isinstance(image, EncodedJpeg)]
    decoded = decode_batch([images[i] for i in encoded], device)
    on_device = dict(zip(encoded, decoded.images, strict=True))
    inputs: list[torch.Tensor | ImageError] = []
    for i, image in enumerate(images):
        if i not in on_device:
            inputs.append(model_input(image, device))
        elif isinstance(pixels := on_device[i], ImageError):
            inputs.append(pixels)
        else:
            inputs.append(_scaled(pixels))
    return ModelInputs(inputs, decoded.on_device)
