"""COCO box mAP of one set of detections against another taken as ground truth, in numpy alone.

The GPU machine has torch and torchvision but no pycocotools, so the benchmark scores its fast paths with this:
COCOeval's bbox AP (IoU 0.50:0.05:0.95, 101 recall points, up to 100 detections per image, area "all", no
crowd boxes), which tests/bench/test_box_map.py checks against pycocotools. A fast path whose detections equal
the reference's scores 1.0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
MAX_DETECTIONS = 100


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, 4) x (m, 4) x1,y1,x2,y2 boxes -> (n, m) IoU, with COCO's +0 pixel convention."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def box_map(reference: Sequence, candidate: Sequence) -> float | None:
    """mAP of `candidate` against `reference` (per image: an object with boxes, scores, labels, or None for an
    image that failed); None when the reference has no boxes at all."""
    labels = set()
    for ref in reference:
        if ref is not None:
            labels.update(int(x) for x in ref.labels)
    if not labels:
        return None
    aps = [_class_ap(reference, candidate, label) for label in sorted(labels)]
    return float(np.mean(aps))


def _class_ap(reference: Sequence, candidate: Sequence, label: int) -> float:
    """Mean over IoU thresholds of the class's 101-point interpolated precision (COCOeval's accumulate)."""
    scores, matched, gt_count = [], [], 0
    for ref, cand in zip(reference, candidate, strict=True):
        gt = ref.boxes[ref.labels == label] if ref is not None else np.zeros((0, 4))
        gt_count += len(gt)
        if cand is None:
            continue
        keep = np.flatnonzero(cand.labels == label)
        # COCOeval: per image and class, the top MAX_DETECTIONS by score, matched in score order.
        keep = keep[np.argsort(-cand.scores[keep], kind="mergesort")][:MAX_DETECTIONS]
        dt, dt_scores = cand.boxes[keep], cand.scores[keep]
        ious = box_iou(dt, gt)
        hits = np.zeros((len(IOU_THRESHOLDS), len(dt)), dtype=bool)
        for t, threshold in enumerate(IOU_THRESHOLDS):
            taken = np.zeros(len(gt), dtype=bool)
            for d in range(len(dt)):
                best, best_iou = -1, min(threshold, 1 - 1e-10)
                for g in range(len(gt)):
                    if not taken[g] and ious[d, g] >= best_iou:
                        best, best_iou = g, ious[d, g]
                if best >= 0:
                    taken[best] = True
                    hits[t, d] = True
        scores.append(dt_scores)
        matched.append(hits)
    if not scores or sum(len(s) for s in scores) == 0:
        return 0.0
    order = np.argsort(-np.concatenate(scores), kind="mergesort")
    hits = np.concatenate(matched, axis=1)[:, order]
    aps = []
    for row in hits:
        tp = np.cumsum(row)
        fp = np.cumsum(~row)
        recall = tp / gt_count
        precision = tp / np.maximum(tp + fp, np.finfo(float).eps)
        precision = np.maximum.accumulate(precision[::-1])[::-1]  # the envelope
        at = np.searchsorted(recall, RECALL_POINTS, side="left")
        aps.append(float(np.mean([precision[i] if i < len(precision) else 0.0 for i in at])))
    return float(np.mean(aps))
