"""The Detector: torchvision's own output, thresholded and capped; out-of-memory batches retried in halves."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import to_tensor

from detection_engine.inference import Detections, Detector, Failed
from detection_engine.models import load_model
from detection_engine.preprocess import host_tensor, model_input

SIZES = [(96, 64), (64, 96), (120, 80), (128, 128), (80, 120)]


@pytest.fixture(scope="module")
def loaded(tiny_options):
    # FCOS: cheap at this size, and even with random weights its scores spread (mobilenet heads score flat).
    return load_model(tiny_options("fcos_resnet50_fpn"))


@pytest.fixture
def images(tmp_path, write_images) -> list[np.ndarray]:
    return [np.array(Image.open(p).convert("RGB")) for p in write_images(tmp_path, SIZES)]


def _host(images: list[np.ndarray]) -> list[torch.Tensor]:
    return [host_tensor(image, pin=False) for image in images]


def _raw(model, images: list[np.ndarray]) -> list[dict]:
    """torchvision's own call on to_tensor() inputs."""
    with torch.inference_mode():
        return model([to_tensor(Image.fromarray(image)) for image in images])


def _reference(model, images: list[np.ndarray], threshold: float, cap: int) -> list[dict]:
    """torchvision's own call, filtered the plain way."""
    outputs = _raw(model, images)
    expected = []
    for out in outputs:
        keep = out["scores"] > threshold
        expected.append({k: out[k][keep][:cap].numpy() for k in ("boxes", "scores", "labels")})
    return expected


def _assert_same(got: Detections, want: dict) -> None:
    assert len(got) == len(want["scores"])
    np.testing.assert_allclose(got.boxes, want["boxes"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(got.scores, want["scores"], atol=1e-4, rtol=0)
    np.testing.assert_array_equal(got.labels, want["labels"])


class OutOfMemoryAbove(torch.nn.Module):
    """The real model behind a fake memory limit: batches larger than `limit` (or holding an image wider
    than `max_width`) raise CUDA's out-of-memory error, as a GPU would."""

    def __init__(self, model, limit: int, max_width: int = 10**9) -> None:
        super().__init__()
        self.model, self.limit, self.max_width = model, limit, max_width
        self.calls: list[int] = []

    def forward(self, images):
        self.calls.append(len(images))
        if len(images) > self.limit or any(image.shape[-1] > self.max_width for image in images):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.model(images)


def test_model_input_matches_torchvision_to_tensor(images):
    for image in images:
        assert torch.equal(model_input(host_tensor(image, pin=False), torch.device("cpu")), to_tensor(image))


def test_detections_are_torchvisions_thresholded_and_capped(loaded, images):
    raw_scores = torch.cat([out["scores"] for out in _raw(loaded.model, images)])
    threshold = float(raw_scores.median())  # so the threshold drops some boxes and keeps some
    cap = 40  # below the model's 100, so the cap binds too
    detector = Detector(loaded.model, loaded.device, score_threshold=threshold, max_detections=cap)

    got = detector(_host(images))

    want = _reference(loaded.model, images, threshold, cap)
    assert 0 < sum(len(g) for g in got) < len(raw_scores)
    assert any(len(g) == cap for g in got)
    for g, w in zip(got, want, strict=True):
        _assert_same(g, w)
        assert len(g) <= cap and (g.scores > threshold).all()
        assert (np.diff(g.scores) <= 0).all(), "best first"


def test_out_of_memory_batch_is_retried_in_halves(loaded, images):
    limited = OutOfMemoryAbove(loaded.model, limit=2)
    detector = Detector(limited, loaded.device, score_threshold=0.01, max_detections=10)

    got = detector(_host(images))  # 5 -> 3 + 2 -> (2 + 1) + 2

    assert limited.calls == [5, 3, 2, 1, 2]
    assert detector.oom_splits == 2
    want = (
        _reference(loaded.model, images[0:2], 0.01, 10)
        + _reference(loaded.model, images[2:3], 0.01, 10)
        + _reference(loaded.model, images[3:5], 0.01, 10)
    )
    for g, w in zip(got, want, strict=True):
        _assert_same(g, w)


def test_image_that_does_not_fit_alone_fails_alone(loaded, images):
    limited = OutOfMemoryAbove(
        loaded.model, limit=8, max_width=121
    )  # only the 128 px wide image "is too big"
    detector = Detector(limited, loaded.device, score_threshold=0.01, max_detections=10)

    got = detector(_host(images))  # 5 -> 3 + 2 -> 3 + (1 + 1)

    assert limited.calls == [5, 3, 2, 1, 1]
    assert isinstance(got[3], Failed)
    assert got[3].reason == "out_of_memory: a 128x128 image does not fit on cpu alone"
    assert all(isinstance(g, Detections) for i, g in enumerate(got) if i != 3)


def test_other_errors_are_not_swallowed(loaded, images):
    def broken(batch):
        raise RuntimeError("device lost")

    with pytest.raises(RuntimeError, match="device lost"):
        Detector(broken, loaded.device)(_host(images))
