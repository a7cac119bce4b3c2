"""The data path: ordered bounded loading, shape grouping, one result per URI, and torchvision equivalence."""

from __future__ import annotations

import math
from concurrent.futures import Future

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import to_tensor

from detection_engine.inference import Detector
from detection_engine.models import load_model
from detection_engine.pipeline import (
    Loaded,
    Loader,
    PipelineOptions,
    group_batches,
    load_in_order,
    run_pipeline,
)
from tests.bad_inputs import write_corpus

pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")

# One representative per family, and the mobilenet Faster R-CNN variant (cheap).
FAMILY_MODELS = [
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "retinanet_resnet50_fpn",
    "fcos_resnet50_fpn",
    "ssd300_vgg16",
    "ssdlite320_mobilenet_v3_large",
]


def _item(index: int, width: int, height: int) -> Loaded:
    return Loaded(index, f"img{index}", tensor=torch.zeros((height, width, 3), dtype=torch.uint8))


def _detector(loaded) -> Detector:
    return Detector(loaded.model, loaded.device, loaded.precision, score_threshold=0.01, max_detections=20)


# -- grouping ------------------------------------------------------------------------------------


def test_window_of_one_batch_keeps_arrival_order():
    items = [_item(i, 64 if i % 2 else 96, 96 if i % 2 else 64) for i in range(10)]
    batches = list(group_batches(iter(items), batch_size=4, window=4))
    assert [[it.index for it in b] for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_grouping_puts_equal_aspect_ratios_together():
    # Alternating landscape and portrait: in arrival order every batch would mix both and pad to a square.
    items = [_item(i, 96, 64) if i % 2 == 0 else _item(i, 64, 96) for i in range(16)]
    batches = list(group_batches(iter(items), batch_size=4, window=16))

    assert sorted(it.index for b in batches for it in b) == list(range(16))  # each image exactly once
    for batch in batches:
        assert len({(it.width, it.height) for it in batch}) == 1, [it.index for it in batch]


def test_grouping_picks_the_nearest_aspect_ratios_for_the_oldest_image():
    sizes = [(100, 100), (160, 100), (98, 100), (60, 100), (101, 100), (100, 160)]
    items = [_item(i, w, h) for i, (w, h) in enumerate(sizes)]
    first = next(group_batches(iter(items), batch_size=3, window=6))
    assert [it.index for it in first] == [0, 2, 4]


def test_oldest_waiting_image_always_leaves_next_and_the_window_bounds_memory():
    window, batch_size = 8, 2
    pulled = 0

    def stream():
        nonlocal pulled
        rng = np.random.default_rng(1)
        for i in range(40):
            pulled += 1
            yield _item(i, int(rng.integers(40, 160)), int(rng.integers(40, 160)))

    emitted: set[int] = set()
    for batch in group_batches(stream(), batch_size, window):
        oldest_waiting = min(set(range(pulled)) - emitted)
        assert oldest_waiting in {it.index for it in batch}
        emitted |= {it.index for it in batch}
        assert pulled - len(emitted) <= window - len(batch), "never more than `window` images held"
    assert emitted == set(range(40))


# -- loading -------------------------------------------------------------------------------------


class RecordingLoader:
    """Stands in for Loader to observe how far load_in_order runs ahead of its consumer."""

    def __init__(self) -> None:
        self.submitted: list[int] = []

    def submit(self, index: int, uri: str) -> Future:
        self.submitted.append(index)
        future: Future = Future()
        future.set_result(Loaded(index, uri))
        return future


def test_loads_come_back_in_manifest_order_with_bounded_look_ahead():
    loader = RecordingLoader()
    uris = [f"u{i}" for i in range(20)]
    seen = []
    for item in load_in_order(uris, loader, max_in_flight=5):
        seen.append(item.index)
        assert len(loader.submitted) <= len(seen) + 5
    assert seen == list(range(20))
    assert loader.submitted == list(range(20))


def test_loader_turns_every_bad_input_into_its_error_code(tmp_path):
    cases = write_corpus(tmp_path)
    with Loader(fetch_workers=4, decode_workers=2, max_pixels=10**8, pin_memory=False) as loader:
        items = list(load_in_order([c.uri for c in cases], loader, max_in_flight=6))

    assert [it.uri for it in items] == [c.uri for c in cases]
    for case, item in zip(cases, items, strict=True):
        if case.ok:
            assert item.error is None, (case.name, item.error)
            assert (item.width, item.height) == case.size, case.name
            assert item.tensor.dtype == torch.uint8 and item.tensor.shape[2] == 3
        else:
            assert item.error.split(":")[0] == case.error_code, (case.name, item.error)
            assert item.tensor is None
        assert item.fetch_s is not None


# -- the whole data path -------------------------------------------------------------------------


def test_one_result_per_uri_and_bad_images_never_enter_a_batch(tmp_path, tiny_options):
    cases = write_corpus(tmp_path)
    loaded = load_model(tiny_options())
    uris = [c.uri for c in cases]

    outcome = run_pipeline(uris, _detector(loaded), PipelineOptions(batch_size=4, fetch_workers=4))

    assert [r.uri for r in outcome.results] == uris
    batched = sorted(i for batch in outcome.batches for i in batch)
    assert batched == [i for i, c in enumerate(cases) if c.ok]
    for case, result in zip(cases, outcome.results, strict=True):
        if case.ok:
            assert result.error is None and (result.width, result.height) == case.size
            assert result.detections is not None and result.infer_s > 0
        else:
            assert result.error.split(":")[0] == case.error_code
            assert result.detections is None and result.infer_s is None
    assert len(outcome.batch_latencies_s) == len(outcome.batches)
    assert all(len(b) <= 4 for b in outcome.batches)


def test_empty_manifest_gives_no_results(tiny_options):
    outcome = run_pipeline([], _detector(load_model(tiny_options())), PipelineOptions())
    assert outcome.results == [] and outcome.batches == []


def _torchvision_reference(model, paths: list[str]) -> list[dict]:
    with torch.inference_mode():
        return model([to_tensor(Image.open(p).convert("RGB")) for p in paths])


def _assert_engine_matches(result, reference: dict, threshold: float, cap: int) -> None:
    keep = reference["scores"] > threshold
    want = {k: reference[k][keep][:cap].numpy() for k in ("boxes", "scores", "labels")}
    got = result.detections
    assert len(got) == len(want["scores"])
    np.testing.assert_allclose(got.boxes, want["boxes"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(got.scores, want["scores"], atol=1e-4, rtol=0)
    np.testing.assert_array_equal(got.labels, want["labels"])


@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_engine_detections_equal_torchvisions_own_call(name, tmp_path, tiny_options, write_images):
    """At batch size 1 against model([img]); at batch size 2 against model(the engine's batch), with the
    grouping the engine chose (the two 3:2 landscape images together, the portrait alone)."""
    paths = write_images(tmp_path, [(96, 64), (64, 96), (150, 100)])
    options = tiny_options(name)
    loaded = load_model(options)
    detector = Detector(
        loaded.model, loaded.device, loaded.precision, options.score_threshold, options.max_detections
    )

    single = run_pipeline(paths, detector, PipelineOptions(batch_size=1))
    for path, result in zip(paths, single.results, strict=True):
        assert len(result.detections) > 0, "the comparison needs boxes"
        (reference,) = _torchvision_reference(loaded.model, [path])
        _assert_engine_matches(result, reference, options.score_threshold, options.max_detections)

    grouped = run_pipeline(paths, detector, PipelineOptions(batch_size=2, group_window=2))
    assert grouped.batches == [[0, 2], [1]]
    for batch in grouped.batches:
        references = _torchvision_reference(loaded.model, [paths[i] for i in batch])
        for index, reference in zip(batch, references, strict=True):
            _assert_engine_matches(
                grouped.results[index], reference, options.score_threshold, options.max_detections
            )


def test_grouping_cuts_padding(tiny_options, mixed_images):
    """The padded area torchvision allocates per batch, with and without grouping, on mixed shapes."""
    loaded = load_model(tiny_options())
    transform = loaded.model.transform

    def padded_pixels(outcome) -> int:
        total = 0
        for batch in outcome.batches:
            shapes = []
            for i in batch:
                image = to_tensor(Image.open(mixed_images[i]).convert("RGB"))
                resized, _ = transform.resize(image, None)
                shapes.append(resized.shape[-2:])
            height = math.ceil(max(s[0] for s in shapes) / 32) * 32
            width = math.ceil(max(s[1] for s in shapes) / 32) * 32
            total += sum(height * width - s[0] * s[1] for s in shapes)
        return total

    detector = _detector(loaded)
    plain = run_pipeline(mixed_images, detector, PipelineOptions(batch_size=2, group_window=1))
    grouped = run_pipeline(mixed_images, detector, PipelineOptions(batch_size=2, group_window=4))
    assert padded_pixels(grouped) < padded_pixels(plain)
