"""Decoded images to model input, split so the cheap host part runs in the loader threads.

The host part wraps the decoder's HxWx3 uint8 array without copying (pinned when a CUDA copy follows, so that
copy is asynchronous); the device part moves uint8 (4x fewer bytes than float) and converts there, exactly as
`torchvision.transforms.functional.to_tensor` does, so results match torchvision's own preprocessing bit for bit.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

# The decoder returns read-only arrays; the engine never writes into these tensors, so torch's warning about
# wrapping a non-writable array is noise.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)


def host_tensor(image: np.ndarray, pin: bool) -> torch.Tensor:
    """HxWx3 uint8 array -> HxWx3 uint8 tensor, pinned when it will be copied to a GPU."""
    tensor = torch.from_numpy(np.ascontiguousarray(image))
    return tensor.pin_memory() if pin else tensor


def model_input(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """HxWx3 uint8 -> 3xHxW float in [0, 1] on `device`."""
    on_device = tensor.to(device, non_blocking=True)
    return on_device.permute(2, 0, 1).contiguous().to(torch.float32).div(255)
