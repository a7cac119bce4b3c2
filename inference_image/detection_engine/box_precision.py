"""Reduced precision for the convolutions, fp32 for box coordinates.

Under autocast, torchvision's detectors compute box coordinates in the dtype of the tensors that reach their
box coder: anchors are made in the feature maps' dtype (`AnchorGenerator`, `DefaultBoxGenerator`), and
`BoxCoder.decode_single` casts the reference boxes to the regression output's dtype. In bf16 (8 significant
bits) a coordinate between 512 and 1024 px can only be a multiple of 4, so every box of an 800 px image
snaps to a 4-8 px grid, and boxes that should match at IoU 0.9 no longer do (BENCHMARKS.md: COCO box mAP
0.44-0.49 against fp32 before this, on the stand-in weights).

So the outputs of the modules whose tensors become coordinates are cast to fp32 as they leave them: the
backbone (features, hence anchors) and the heads whose regressions are decoded. Their convolutions and
matrix products still run in the reduced dtype inside (the cost is there); only the box arithmetic after
them, a small share of the time, runs in fp32. In fp32 the casts are no-ops, so a model shared by
Detectors of several precisions (the benchmarks do this) gives fp32 detections unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# Submodules whose outputs become box coordinates, by attribute path; a model has some of them:
# Faster R-CNN: backbone, rpn.head, roi_heads.box_predictor; RetinaNet, FCOS, SSD, SSDlite: backbone, head.
COORDINATE_SOURCES = ("backbone", "rpn.head", "roi_heads.box_predictor", "head")

_MARK = "_detection_engine_fp32_outputs"


def keep_boxes_in_fp32(model: nn.Module) -> list[str]:
    """Cast the coordinate sources' floating outputs to fp32, once per model; returns the paths hooked."""
    hooked = []
    for path in COORDINATE_SOURCES:
        try:
            module = model.get_submodule(path)
        except AttributeError:
            continue
        if not getattr(module, _MARK, False):
            module.register_forward_hook(_outputs_to_fp32)
            object.__setattr__(module, _MARK, True)
        hooked.append(path)
    return hooked


def _outputs_to_fp32(module: nn.Module, inputs: Any, output: Any) -> Any:
    return to_fp32(output)


def to_fp32(value: Any) -> Any:
    """Floating tensors in a tensor, list, tuple or dict (any nesting) as fp32; everything else as it is."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, dict):
        return type(value)((key, to_fp32(item)) for key, item in value.items())
    if isinstance(value, tuple | list):
        return type(value)(to_fp32(item) for item in value)
    return value
