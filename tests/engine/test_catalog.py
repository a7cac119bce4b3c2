"""The torch-free catalog must agree with torchvision, which the Airflow side cannot import."""

from __future__ import annotations

import pytest
from torchvision.models import get_model_builder, get_model_weights

from detection_engine import catalog


@pytest.mark.parametrize("name", catalog.MODELS)
def test_catalog_matches_torchvision(name):
    spec = catalog.MODELS[name]
    enum = get_model_weights(name)
    get_model_builder(name)  # raises for an unknown builder
    assert enum.__name__ == spec.weights_enum
    assert tuple(member.name for member in enum) == spec.weights_members
    assert enum.DEFAULT.name == spec.weights_members[0]
    assert enum.COCO_V1.meta["_metrics"]["COCO-val2017"]["box_map"] == spec.published_box_map
    assert enum.COCO_V1.meta["categories"] == list(catalog.COCO_V1_CATEGORIES)


def test_the_label_set_is_torchvisions():
    from torchvision.models._meta import _COCO_CATEGORIES

    assert list(catalog.COCO_V1_CATEGORIES) == _COCO_CATEGORIES


@pytest.mark.parametrize("name", catalog.MODELS)
def test_family_defaults_are_torchvisions(name):
    """The builder keywords exist and default to what `Family` says: built on the meta device, untouched."""
    import torch

    family = catalog.MODELS[name].post_processing
    with torch.device("meta"):
        model = get_model_builder(name)(weights=None, weights_backbone=None)
    heads = model.roi_heads if family.name == "faster_rcnn" else model
    assert heads.score_thresh == pytest.approx(family.default_score)
    assert heads.detections_per_img == family.default_detections
    with torch.device("meta"):
        tuned = get_model_builder(name)(
            weights=None, weights_backbone=None, **{family.score_kwarg: 0.5, family.detections_kwarg: 7}
        )
    tuned_heads = tuned.roi_heads if family.name == "faster_rcnn" else tuned
    assert (tuned_heads.score_thresh, tuned_heads.detections_per_img) == (0.5, 7)


def test_weights_id_names_one_model_version_once():
    assert (
        catalog.weights_id("fasterrcnn_resnet50_fpn", "DEFAULT") == "FasterRCNN_ResNet50_FPN_Weights.COCO_V1"
    )
    assert (
        catalog.weights_id("fasterrcnn_resnet50_fpn", "COCO_V1") == "FasterRCNN_ResNet50_FPN_Weights.COCO_V1"
    )
    assert catalog.weights_id("ssd300_vgg16", "none") == "none"
    assert catalog.weights_id("ssd300_vgg16", "gs://b/w.pth") == "gs://b/w.pth"


@pytest.mark.parametrize("spelling", ["none", "None", "NONE", "nOnE"])
def test_random_weights_have_one_spelling(spelling):
    assert catalog.canonical_weights("ssd300_vgg16", spelling) == "none"
    assert catalog.weights_id("ssd300_vgg16", spelling) == "none"


def test_enum_members_are_case_normalised_and_checked_against_the_models_enum():
    assert catalog.canonical_weights("fcos_resnet50_fpn", "default") == "DEFAULT"
    assert catalog.weights_id("fcos_resnet50_fpn", "coco_v1") == "FCOS_ResNet50_FPN_Weights.COCO_V1"
    with pytest.raises(
        catalog.WeightsError, match=r"'IMAGENET1K_V1' is not a weights member of fcos_resnet50_fpn"
    ):
        catalog.canonical_weights("fcos_resnet50_fpn", "IMAGENET1K_V1")


def test_a_state_dict_is_keyed_on_its_content():
    first = catalog.weights_id("ssd300_vgg16", "/w/model.pth", "AB" * 32)
    second = catalog.weights_id("ssd300_vgg16", "/w/model.pth", "cd" * 32)
    assert first == "/w/model.pth@sha256:" + "ab" * 32 and first != second
