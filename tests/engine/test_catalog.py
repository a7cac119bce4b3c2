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


def test_weights_id_names_one_model_version_once():
    assert (
        catalog.weights_id("fasterrcnn_resnet50_fpn", "DEFAULT") == "FasterRCNN_ResNet50_FPN_Weights.COCO_V1"
    )
    assert (
        catalog.weights_id("fasterrcnn_resnet50_fpn", "COCO_V1") == "FasterRCNN_ResNet50_FPN_Weights.COCO_V1"
    )
    assert catalog.weights_id("ssd300_vgg16", "none") == "none"
    assert catalog.weights_id("ssd300_vgg16", "gs://b/w.pth") == "gs://b/w.pth"
