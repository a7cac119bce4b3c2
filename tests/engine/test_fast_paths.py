"""Fast paths: the compiled backbone gives the eager model's detections, falls back to eager when compiling
fails (never an error row), and a shard records what ran."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from detection_engine import cli, fast_paths, layout
from detection_engine.fast_paths import CompiledBackbone
from detection_engine.inference import Detector, Failed
from detection_engine.models import load_model
from detection_engine.replicas import load_replicas

MIXED = [(96, 64), (64, 96), (128, 128), (150, 100)]


def _images(sizes, seed=0) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    return [torch.from_numpy(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def _detector(model) -> Detector:
    return Detector(model, torch.device("cpu"), "fp32", score_threshold=0.01, max_detections=20)


NO_COMPILER = RuntimeError("InductorError: no C++ compiler found")


def _broken_compile(monkeypatch, error: Exception = NO_COMPILER):
    def compile(module, **kwargs):
        def fails(*args, **kw):
            raise error

        return fails

    monkeypatch.setattr(torch, "compile", compile)


@pytest.mark.timeout(600)
def test_the_compiled_backbone_gives_the_eager_detections_for_every_shape(tiny_options, monkeypatch, caplog):
    # A recompile would raise inside the compiled call, so the backbone would fall back to eager and the
    # describe() assertion would fail: one compile serves these shapes (on the pinned torch).
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    eager = load_model(tiny_options())
    compiled = fast_paths.compile_backbone(load_model(tiny_options()).model)
    images = _images([(96, 64), (64, 96), (150, 100)])
    for image in images:  # one image at a time: a new shape per call
        (want,) = _detector(eager.model)([image])
        (got,) = _detector(compiled)([image])
        assert not isinstance(got, Failed)
        _assert_close(got, want)
    assert fast_paths.describe([compiled]) == {
        "channels_last": False,
        "compile": "on",
        "decode_on_device": False,
        "prefetch_to_device": False,
    }
    assert compiled.backbone.graphs == 1

    # Outside the traced graph's guards (a batch of two: dynamic shapes specialise on size 1) the compiler
    # makes another graph: counted, timed and logged, the detections still the eager model's.
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", False)
    pair = _images([(96, 64), (96, 64)], seed=1)
    with caplog.at_level("INFO", logger="detection_engine.fast_paths"):
        got = _detector(compiled)(pair)
    for a, b in zip(got, _detector(eager.model)(pair), strict=True):
        _assert_close(a, b)
    assert compiled.backbone.graphs == 2 and compiled.backbone.compiled
    assert compiled.backbone.compile_s > 0
    assert "a backbone graph compiled for input 2x3x" in caplog.text


def _assert_close(got, want) -> None:
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-2)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-4)


def test_a_failing_compile_falls_back_to_eager_once_and_no_image_fails(tiny_options, monkeypatch, caplog):
    eager = load_model(tiny_options()).model
    _broken_compile(monkeypatch)
    model = fast_paths.compile_backbone(load_model(tiny_options()).model)
    images = _images(MIXED)
    want = _detector(eager)(images[:2])
    got = _detector(model)(images[:2])
    assert not any(isinstance(o, Failed) for o in got)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a.boxes, b.boxes)
    assert "no C++ compiler found" in model.backbone.fallback_reason
    assert caplog.text.count("torch.compile failed") == 1
    _detector(model)(images[2:])  # eager from now on: no second attempt, no second warning
    assert caplog.text.count("torch.compile failed") == 1
    assert fast_paths.describe([model])["compile"].startswith("eager fallback: RuntimeError: InductorError")


def test_an_input_that_fails_eagerly_too_is_the_images_error_and_compiling_stays_on(monkeypatch):
    class Backbone(nn.Module):
        out_channels = 3

        def forward(self, x):
            if x.shape[-1] > 10:
                raise ValueError("too wide for this backbone")
            return x

    _broken_compile(monkeypatch, ValueError("too wide for this backbone"))
    wrapped = CompiledBackbone(Backbone())
    with pytest.raises(ValueError, match="too wide"):
        wrapped(torch.zeros(1, 3, 4, 20))
    assert wrapped.compiled and wrapped.fallback_reason is None


def test_out_of_memory_in_the_compiled_call_reaches_the_detector(monkeypatch):
    _broken_compile(monkeypatch, torch.OutOfMemoryError("CUDA out of memory"))
    wrapped = CompiledBackbone(nn.Identity())
    with pytest.raises(torch.OutOfMemoryError):
        wrapped(torch.zeros(1, 3, 4, 4))
    assert wrapped.compiled  # a batch too big for memory says nothing about compiling


def test_the_wrapper_keeps_what_detection_heads_read_and_one_copy_of_the_weights(tiny_options):
    model = load_model(tiny_options()).model
    out_channels = model.backbone.out_channels
    parameters = sum(p.numel() for p in model.parameters())
    fast_paths.compile_backbone(model)
    assert model.backbone.out_channels == out_channels
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert fast_paths.compile_backbone(model) is model and isinstance(model.backbone.eager, nn.Module)
    with pytest.raises(ValueError, match="no backbone"):
        fast_paths.compile_backbone(nn.Linear(2, 2))


def test_describe_says_what_ran_on_the_replicas(tiny_options, monkeypatch):
    plain = load_replicas(tiny_options(), [torch.device("cpu")])
    assert fast_paths.describe([r.model for r in plain]) == {
        "channels_last": False,
        "compile": "off",
        "decode_on_device": False,
        "prefetch_to_device": False,
    }
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: module)
    both = load_replicas(tiny_options(), [torch.device("cpu")] * 2, channels_last=True, compile=True)
    assert both[0].model.backbone is not both[1].model.backbone  # each replica compiles its own
    assert fast_paths.describe([r.model for r in both]) == {
        "channels_last": True,
        "compile": "on",
        "decode_on_device": False,
        "prefetch_to_device": False,
    }


def test_a_shard_with_every_fast_path_records_them(tmp_path, write_images, write_manifest, monkeypatch):
    images = write_images(tmp_path / "images", MIXED)
    manifest = write_manifest(tmp_path / "shard.txt", images)
    _broken_compile(monkeypatch)  # the pod image without a compiler: the shard still runs, eagerly
    prefix = str(tmp_path / "out")
    args = [
        f"--manifest={manifest}", f"--output-prefix={prefix}", "--run-id=r", "--run-date=2026-12-03",
        "--shard-index=0", "--model=fasterrcnn_mobilenet_v3_large_320_fpn", "--weights=none",
        "--min-size=128", "--max-size=160", "--score-threshold=0.01", "--channels-last", "--compile",
        f"--summary-path={tmp_path / 'summary.json'}",
    ]  # fmt: skip
    assert cli.main(args) == cli.EXIT_OK
    metrics = json.loads(Path(layout.shard_metrics_uri(prefix, 0)).read_text())
    assert metrics["ok"] == len(images)
    recorded = json.loads(metrics["fast_paths"])
    assert recorded["channels_last"] is True
    assert recorded["compile"].startswith("eager fallback: RuntimeError: InductorError: no C++ compiler")
