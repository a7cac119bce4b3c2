"""--prefetch-to-device: each replica stages its next batch while it runs the one before; batches, rows and
detections are the same as without, on one replica and on two, and a batch that cannot be staged still runs."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from detection_engine import inference
from detection_engine.pipeline import PipelineOptions, run_pipeline
from detection_engine.replicas import detectors_for, load_replicas
from tests.engine.conftest import MIXED_SIZES, exact_detections

CPU = torch.device("cpu")


def _outcome(outcome) -> tuple:
    return (
        outcome.batches,
        [(r.uri, r.error, r.width, r.height) for r in outcome.results],
        [exact_detections(r) for r in outcome.results],
    )


@pytest.fixture
def uris(tmp_path, write_images):
    good = write_images(tmp_path / "images", MIXED_SIZES * 2)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 not the rest of a JPEG")
    return [*good[:5], str(corrupt), *good[5:11], str(tmp_path / "missing.png"), *good[11:]]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("devices", [1, 2])
def test_prefetching_changes_no_batch_row_or_detection(uris, tiny_options, devices):
    detectors = detectors_for(load_replicas(tiny_options(), [CPU] * devices), 0.01, 20)
    plain = run_pipeline(uris, detectors, PipelineOptions(batch_size=2, decode_workers=1))
    options = PipelineOptions(batch_size=2, decode_workers=1, prefetch_to_device=True)
    prefetched = run_pipeline(uris, detectors, options)

    assert _outcome(prefetched) == _outcome(plain)
    assert sum(d["images"] for d in prefetched.devices) == sum(len(b) for b in prefetched.batches)
    assert sum(d["batches"] for d in prefetched.devices) == len(prefetched.batches)


@pytest.mark.timeout(300)
def test_the_next_batch_is_staged_on_its_own_thread_while_the_one_before_runs(uris, tiny_options):
    (detector,) = detectors_for(load_replicas(tiny_options(), [CPU]), 0.01, 20)
    events: list[tuple[str, float, str]] = []  # (what, when, on which thread)
    stage, run = detector.stage, detector.run

    def staging(images):
        events.append(("staging", time.perf_counter(), threading.current_thread().name))
        return stage(images)

    def running(staged):
        outputs = run(staged)
        events.append(("ran", time.perf_counter(), threading.current_thread().name))
        return outputs

    detector.stage, detector.run = staging, running
    options = PipelineOptions(batch_size=2, decode_workers=1, prefetch_to_device=True)
    outcome = run_pipeline(uris, [detector], options)

    ran = [t for what, t, _ in events if what == "ran"]
    staging_started = [t for what, t, _ in events if what == "staging"]
    assert len(ran) == len(staging_started) == len(outcome.batches)
    # Batch k+1 began staging before batch k's turn ended, for some k (for all, unless loading lagged).
    assert any(staging_started[k + 1] < ran[k] for k in range(len(ran) - 1))
    assert {thread for what, _, thread in events if what == "staging"} == {"stage0_0"}
    assert {thread for what, _, thread in events if what == "ran"} == {"replica0_0"}


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "error", [torch.OutOfMemoryError("CUDA out of memory"), RuntimeError("a copy that failed")]
)
def test_a_batch_that_cannot_be_staged_is_prepared_on_its_turn(uris, tiny_options, monkeypatch, error):
    detectors = detectors_for(load_replicas(tiny_options(), [CPU]), 0.01, 20)
    plain = run_pipeline(uris, detectors, PipelineOptions(batch_size=2, decode_workers=1))
    prepare = inference.model_inputs
    refused = []

    def fails_while_staging(images, device):
        if threading.current_thread().name.startswith("stage"):
            refused.append(len(images))
            raise error
        return prepare(images, device)

    monkeypatch.setattr(inference, "model_inputs", fails_while_staging)
    options = PipelineOptions(batch_size=2, decode_workers=1, prefetch_to_device=True)
    prefetched = run_pipeline(uris, detectors, options)

    assert refused and len(refused) == len(prefetched.batches)
    assert _outcome(prefetched) == _outcome(plain)
