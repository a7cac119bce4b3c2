"""bench/box_map.py scores detections as pycocotools' COCOeval does (the GPU machine has no pycocotools)."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from bench.box_map import box_map


@dataclass
class Found:
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


def _random(rng: np.random.Generator, count: int) -> Found:
    xy = rng.uniform(0, 200, (count, 2))
    wh = rng.uniform(4, 80, (count, 2))
    return Found(
        np.hstack([xy, xy + wh]).astype(np.float32),
        rng.uniform(0.05, 1, count).astype(np.float32),
        rng.integers(1, 4, count),
    )


def _jitter(rng: np.random.Generator, found: Found, scale: float) -> Found:
    keep = rng.uniform(size=len(found.scores)) > 0.2
    boxes = found.boxes[keep] + rng.normal(0, scale, (int(keep.sum()), 4)).astype(np.float32)
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)  # detectors never give inverted boxes
    return Found(boxes, found.scores[keep], found.labels[keep])


def _cocoeval(reference: list[Found], candidate: list[Found]) -> float:
    images = [{"id": i + 1} for i in range(len(reference))]
    annotations, detections = [], []
    for i, (ref, cand) in enumerate(zip(reference, candidate, strict=True)):
        for box, label in zip(ref.boxes.tolist(), ref.labels.tolist(), strict=True):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": label,
                                "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": 0})  # fmt: skip
        for box, score, label in zip(
            cand.boxes.tolist(), cand.scores.tolist(), cand.labels.tolist(), strict=True
        ):
            detections.append({"image_id": i + 1, "category_id": label, "score": score,
                               "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations,
                      "categories": [{"id": c} for c in (1, 2, 3)]}  # fmt: skip
        gt.createIndex()
        evaluation = COCOeval(gt, gt.loadRes(detections) if detections else COCO(), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return float(evaluation.stats[0])


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 5), st.floats(0.0, 12.0))
def test_box_map_equals_cocoeval(seed, images, jitter):
    rng = np.random.default_rng(seed)
    reference = [_random(rng, int(rng.integers(1, 12))) for _ in range(images)]
    candidate = [_jitter(rng, ref, jitter) for ref in reference]
    if not any(len(c.scores) for c in candidate):
        return  # pycocotools cannot load an empty result list
    assert box_map(reference, candidate) == pytest.approx(_cocoeval(reference, candidate), abs=1e-6)


def test_detections_equal_to_the_reference_score_one_and_no_reference_boxes_score_none():
    found = _random(np.random.default_rng(0), 10)
    assert box_map([found, None], [found, None]) == pytest.approx(1.0)
    empty = Found(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    assert box_map([empty], [found]) is None
