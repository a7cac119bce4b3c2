"""Decoded images to model input, split so the cheap host part runs in the loader threads.

The host part copies the decoder's HxWx3 uint8 array once, into pinned memory when a CUDA copy follows (so
that copy is asynchronous); the device part moves uint8 (4x fewer bytes than float) and converts there, exactly
as `torchvision.transforms.functional.to_tensor` does, so results match torchvision's own preprocessing bit for
bit.
"""

from __future__ import annotations

import numpy as np
import torch


def host_tensor(image: np.ndarray, pin: bool) -> torch.Tensor:
    """HxWx3 uint8 array -> HxWx3 uint8 tensor of its own (the decoder's arrays are read-only)."""
    tensor = torch.empty(image.shape, dtype=torch.uint8, pin_memory=pin)
    tensor.numpy()[...] = image
    return tensor


def model_input(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """HxWx3 uint8 -> 3xHxW float in [0, 1] on `device`."""
    on_device = tensor.to(device, non_blocking=True)
    return on_device.permute(2, 0, 1).contiguous().to(torch.float32).div(255)
