"""Reduced precision keeps box coordinates in fp32: under bf16 autocast every box decode of every detector
family sees fp32 anchors, proposals and regressions (torchvision alone would decode in bf16), and fp32
detections are unchanged by the casts."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch

from detection_engine.box_precision import keep_boxes_in_fp32, to_fp32
from detection_engine.inference import Detector
from detection_engine.models import load_model

# One model per family whose boxes come out of a box coder (Faster R-CNN: RPN and RoI heads; the others: one).
FAMILIES = {
    "fasterrcnn_mobilenet_v3_large_320_fpn": ("rpn.box_coder", "roi_heads.box_coder"),
    "retinanet_resnet50_fpn": ("box_coder",),
    "fcos_resnet50_fpn": ("box_coder",),
    "ssdlite320_mobilenet_v3_large": ("box_coder",),
}


def _image(width=150, height=100, seed=0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _decode_dtypes(model, coders, monkeypatch) -> set[tuple[torch.dtype, torch.dtype]]:
    """Every (regression, reference boxes) dtype pair that reaches the model's box coders."""
    seen = set()
    for path in coders:
        coder = model.get_submodule(path.rsplit(".", 1)[0]) if "." in path else model
        box_coder = getattr(coder, path.rsplit(".", 1)[-1])
        # BoxCoder decodes in decode_single (decode calls it); FCOS's BoxLinearCoder has decode alone.
        method = "decode_single" if hasattr(box_coder, "decode_single") else "decode"
        original = getattr(box_coder, method)

        def spy(rel_codes, boxes, original=original):
            seen.add((rel_codes.dtype, boxes.dtype))
            return original(rel_codes, boxes)

        monkeypatch.setattr(box_coder, method, spy)
    return seen


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_under_bf16_every_box_is_decoded_in_fp32(name, tiny_options, monkeypatch):
    model = load_model(tiny_options(name)).model
    seen = _decode_dtypes(model, FAMILIES[name], monkeypatch)

    Detector(model, torch.device("cpu"), "bf16", score_threshold=0.01)([_image()])

    assert seen == {(torch.float32, torch.float32)}


def test_without_the_casts_torchvision_decodes_boxes_in_bf16(tiny_options, monkeypatch):
    """The reason for box_precision.py, kept as a check: if torchvision ever decodes in fp32 itself, this
    fails and the casts can go."""
    name = "fasterrcnn_mobilenet_v3_large_320_fpn"
    model = load_model(tiny_options(name)).model
    seen = _decode_dtypes(model, FAMILIES[name], monkeypatch)

    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        model([_image().permute(2, 0, 1).float() / 255])

    assert (torch.bfloat16, torch.bfloat16) in seen


def test_the_casts_leave_fp32_detections_unchanged(tiny_options):
    model = load_model(tiny_options()).model
    image = _image(seed=3)
    before = Detector(model, torch.device("cpu"), "fp32", score_threshold=0.01)([image])[0]

    assert keep_boxes_in_fp32(model) == ["backbone", "rpn.head", "roi_heads.box_predictor"]
    keep_boxes_in_fp32(model)  # idempotent: one hook per module
    assert len(model.backbone._forward_hooks) == 1
    after = Detector(model, torch.device("cpu"), "fp32", score_threshold=0.01)([image])[0]

    np.testing.assert_array_equal(before.boxes, after.boxes)
    np.testing.assert_array_equal(before.scores, after.scores)


def test_to_fp32_casts_floating_tensors_at_any_depth_and_keeps_the_rest():
    half = torch.ones(2, dtype=torch.bfloat16)
    value = OrderedDict(a=[half, (half, torch.arange(3))], b="text", c=None)

    cast = to_fp32(value)

    assert isinstance(cast, OrderedDict) and list(cast) == ["a", "b", "c"]
    assert cast["a"][0].dtype == torch.float32 and cast["a"][1][0].dtype == torch.float32
    assert isinstance(cast["a"][1], tuple) and cast["a"][1][1].dtype == torch.int64
    assert (cast["b"], cast["c"]) == ("text", None)
