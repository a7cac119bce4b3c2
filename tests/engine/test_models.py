"""The model registry: every catalog model builds, and each kind of weights loads (or fails) as documented."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models import get_model_builder, get_model_weights
from torchvision.models._meta import _COCO_CATEGORIES  # torchvision's own list, to check ours against

from detection_engine.catalog import MODELS
from detection_engine.inference import Detector
from detection_engine.models import (
    DeviceError,
    ModelLoadError,
    cpu_computes,
    effective_precision,
    load_model,
    resolve_device,
)

CHEAP = "fasterrcnn_mobilenet_v3_large_320_fpn"


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Equal parameters and statistics. Pretrained builds use FrozenBatchNorm2d, which has no
    num_batches_tracked counter (meaningless at inference), so that key alone may be missing on one side."""
    sa, sb = a.state_dict(), b.state_dict()
    counters = {k for k in sa.keys() ^ sb.keys() if k.endswith("num_batches_tracked")}
    if sa.keys() ^ sb.keys() - counters:
        return False
    return all(torch.equal(sa[k], sb[k]) for k in sa.keys() & sb.keys())


def _save_state_dict(path: Path, model: torch.nn.Module, wrap: bool = False) -> str:
    state = model.state_dict()
    torch.save({"model": state, "epoch": 3} if wrap else state, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_catalog_names_match_torchvision(name):
    assert get_model_builder(name) is not None
    weights = get_model_weights(name)
    assert weights.__name__ == MODELS[name].weights_enum
    assert "DEFAULT" in weights.__members__


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_catalog_model_loads_with_random_weights(name, tiny_options):
    loaded = load_model(tiny_options(name, max_detections=500))

    assert not loaded.model.training
    assert loaded.random_weights and loaded.weights_id == "none" and loaded.weights_sha256 is None
    assert loaded.categories == list(_COCO_CATEGORIES)
    assert loaded.device == torch.device("cpu") and loaded.precision == "fp32"
    assert loaded.load_s > 0
    # The model's own threshold drops to the engine's 0.01 (SSDlite's default, 0.001, is lower already) and its
    # cap rises to the engine's 500, so neither hides a detection the engine asked for.
    family = MODELS[name].family
    heads = loaded.model.roi_heads if family == "faster_rcnn" else loaded.model
    assert heads.score_thresh == pytest.approx(0.001 if family == "ssdlite" else 0.01)
    assert heads.detections_per_img == 500


def test_random_init_is_seeded(tiny_options):
    first = load_model(tiny_options(seed=7)).model
    again = load_model(tiny_options(seed=7)).model
    other = load_model(tiny_options(seed=8)).model
    assert _same_weights(first, again)
    assert not _same_weights(first, other)


def test_image_size_override_applies_to_resizable_models(tiny_options):
    model = load_model(tiny_options(min_size=96, max_size=144)).model
    assert model.transform.min_size == (96,) and model.transform.max_size == 144


def test_fixed_size_models_ignore_size_override_with_a_warning(tiny_options, caplog):
    with caplog.at_level(logging.WARNING):
        model = load_model(tiny_options("ssdlite320_mobilenet_v3_large", min_size=96, max_size=144)).model
    assert model.transform.fixed_size == (320, 320)
    assert "fixed input size" in caplog.text


def test_engine_threshold_above_the_default_keeps_the_model_default(tiny_options):
    model = load_model(tiny_options(score_threshold=0.5, max_detections=10)).model
    assert model.roi_heads.score_thresh == pytest.approx(0.05)  # torchvision's default, untouched
    assert model.roi_heads.detections_per_img == 100


def test_state_dict_file_loads_and_records_its_sha256(tmp_path, tiny_options):
    source = load_model(tiny_options(seed=3)).model
    path = tmp_path / "weights.pth"
    sha256 = _save_state_dict(path, source)

    for weights in (str(path), path.as_uri()):
        loaded = load_model(tiny_options(weights=weights, weights_sha256=sha256))
        assert _same_weights(loaded.model, source)
        assert loaded.weights_sha256 == sha256
        assert loaded.weights_id == f"{weights}@sha256:{sha256}"  # keyed on content, not the path
        assert not loaded.random_weights
        assert loaded.categories == list(_COCO_CATEGORIES)


def test_reference_script_checkpoint_format_loads(tmp_path, tiny_options):
    source = load_model(tiny_options(seed=4)).model
    path = tmp_path / "checkpoint.pth"
    _save_state_dict(path, source, wrap=True)
    assert _same_weights(load_model(tiny_options(weights=str(path))).model, source)


def test_wrong_sha256_is_rejected(tmp_path, tiny_options):
    path = tmp_path / "weights.pth"
    _save_state_dict(path, load_model(tiny_options()).model)
    with pytest.raises(ModelLoadError, match="expected " + "0" * 64):
        load_model(tiny_options(weights=str(path), weights_sha256="0" * 64))


def test_state_dict_with_other_classes_gets_numeric_labels(tmp_path, tiny_options):
    torch.manual_seed(0)
    fine_tuned = get_model_builder(CHEAP)(weights=None, weights_backbone=None, num_classes=5)
    path = tmp_path / "five_classes.pth"
    _save_state_dict(path, fine_tuned)

    loaded = load_model(tiny_options(weights=str(path)))

    assert loaded.model.roi_heads.box_predictor.cls_score.out_features == 5
    assert loaded.categories == []
    assert loaded.label_name(3) == "3"


def test_retinanet_class_count_accounts_for_anchors(tmp_path, tiny_options):
    torch.manual_seed(0)
    name = "retinanet_resnet50_fpn"
    fine_tuned = get_model_builder(name)(weights=None, weights_backbone=None, num_classes=7)
    path = tmp_path / "retinanet7.pth"
    _save_state_dict(path, fine_tuned)
    loaded = load_model(tiny_options(name, weights=str(path)))
    assert loaded.model.head.classification_head.num_classes == 7


def test_state_dict_of_another_model_is_refused(tmp_path, tiny_options):
    path = tmp_path / "fcos.pth"
    _save_state_dict(path, load_model(tiny_options("fcos_resnet50_fpn")).model)
    with pytest.raises(ModelLoadError, match="does not"):
        load_model(tiny_options(weights=str(path)))


def test_file_that_is_no_state_dict_is_refused(tmp_path, tiny_options):
    path = tmp_path / "notes.pth"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ModelLoadError, match="not a loadable state dict"):
        load_model(tiny_options(weights=str(path)))


def test_unknown_weights_name_lists_the_valid_ones(tiny_options):
    with pytest.raises(ModelLoadError, match="DEFAULT, COCO_V1") as err:
        load_model(tiny_options(weights="COCO_V9"))
    assert "'none'" in str(err.value)  # catalog.canonical_weights' message, the same as validate_config's


def test_pretrained_weights_load_from_the_torch_hub_cache(tmp_path, tiny_options, monkeypatch):
    """Enum weights resolve through TORCH_HOME, as in an image with baked weights; no network involved."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    member = get_model_weights(CHEAP).DEFAULT
    cached = tmp_path / "torch" / "hub" / "checkpoints" / Path(member.url).name
    cached.parent.mkdir(parents=True)
    source = load_model(tiny_options(seed=5)).model
    sha256 = _save_state_dict(cached, source)

    loaded = load_model(tiny_options(weights="DEFAULT"))

    assert _same_weights(loaded.model, source)
    assert loaded.weights_id == f"{type(member).__name__}.COCO_V1"
    assert loaded.weights_sha256 == sha256
    assert loaded.categories == member.meta["categories"]
    assert not loaded.random_weights

    # A state dict saved from a pretrained build (FrozenBatchNorm2d, no num_batches_tracked), as Beam's
    # example saves one, loads into the engine's plain build.
    resaved = tmp_path / "from_pretrained.pth"
    _save_state_dict(resaved, loaded.model)
    assert _same_weights(load_model(tiny_options(weights=str(resaved))).model, source)


def test_pretrained_weights_that_cannot_be_downloaded_say_what_to_do(tmp_path, tiny_options, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens on the discard port: fails at once
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    # urllib caches its proxy-aware opener on first use: give this test its own, and drop it afterwards.
    monkeypatch.setattr(urllib.request, "_opener", None)

    with pytest.raises(ModelLoadError) as err:
        load_model(tiny_options(weights="DEFAULT"))

    message = str(err.value)
    assert "\n" not in message
    assert "cannot load pretrained weights COCO_V1" in message
    assert "--weights PATH" in message and "--weights none" in message


def test_state_dict_from_gcs(gcs_bucket, gcs_emulator, tmp_path, tiny_options):
    source = load_model(tiny_options(seed=6)).model
    path = tmp_path / "weights.pth"
    sha256 = _save_state_dict(path, source)
    uri = f"{gcs_bucket}/models/weights.pth"
    gcs_emulator.put(uri, path.read_bytes())

    loaded = load_model(tiny_options(weights=uri, weights_sha256=sha256))

    assert _same_weights(loaded.model, source)
    assert loaded.weights_sha256 == sha256 and loaded.weights_id == f"{uri}@sha256:{sha256}"


def test_missing_gcs_state_dict_is_a_load_error(gcs_bucket, tiny_options):
    with pytest.raises(ModelLoadError, match="neither a weights name"):
        load_model(tiny_options(weights=f"{gcs_bucket}/models/absent.pth"))


def test_unknown_model_is_a_load_error(tiny_options):
    with pytest.raises(ModelLoadError, match="unknown model 'yolo'"):
        load_model(tiny_options("yolo"))


def test_half_precision_falls_back_to_fp32_on_a_cpu_without_it(caplog, monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_fp16_supported", lambda: False)
    with caplog.at_level(logging.WARNING):
        assert effective_precision("fp16", torch.device("cpu")) == "fp32"
        assert effective_precision("bf16", torch.device("cpu")) == "fp32"
    assert "CPU that computes it natively (AVX512-BF16 or AMX)" in caplog.text
    assert "(AMX-FP16)" in caplog.text
    assert effective_precision("fp32", torch.device("cpu")) == "fp32"


@pytest.mark.parametrize("feature", ["_is_avx512_bf16_supported", "_is_amx_tile_supported"])
def test_bf16_runs_on_a_cpu_that_computes_it(monkeypatch, feature):
    for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, check, lambda check=check: check == feature)
    assert effective_precision("bf16", torch.device("cpu")) == "bf16"
    assert cpu_computes("bf16")


def test_cpu_feature_checks_missing_from_torch_mean_fp32(monkeypatch):
    for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported", "_is_amx_fp16_supported"):
        monkeypatch.delattr(torch.cpu, check, raising=False)
    assert effective_precision("bf16", torch.device("cpu")) == "fp32"
    assert effective_precision("fp16", torch.device("cpu")) == "fp32"


@pytest.mark.skipif(not cpu_computes("bf16"), reason="this CPU has no native bf16")
def test_bf16_on_this_cpu_runs_the_model_under_autocast(tiny_options):
    loaded = load_model(dataclasses.replace(tiny_options(CHEAP), precision="bf16"))
    assert loaded.precision == "bf16"
    detector = Detector(loaded.model, loaded.device, loaded.precision, score_threshold=0.0, max_detections=5)
    image = torch.randint(0, 256, (48, 64, 3), dtype=torch.uint8)
    (output,) = detector([image])
    assert output.boxes.dtype == np.float32 and output.scores.dtype == np.float32
    assert len(output) > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_requested_without_cuda_is_a_device_error():
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceError, match="no CUDA device"):
        resolve_device("cuda")
