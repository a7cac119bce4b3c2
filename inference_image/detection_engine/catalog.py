"""The detectors this project supports, by name, without importing torch.

The Airflow side validates run config against this list at parse/validate time; the engine's model
registry (`models.py`) builds each entry with torchvision.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MODEL = "fasterrcnn_resnet50_fpn"
RANDOM_WEIGHTS = "none"
# Bounds on reading a state dict file, for the engine that loads it and the Airflow side that checksums it first.
STATE_DICT_MAX_BYTES = 4 << 30  # torchvision's largest detection state dict is ~170 MB
STATE_DICT_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class ModelSpec:
    name: str  # torchvision.models.detection builder name
    family: str  # faster_rcnn | retinanet | fcos | ssd | ssdlite
    weights_enum: str  # torchvision.models.detection weights enum class name
    resizable: bool  # whether min_size/max_size apply (SSD models have a fixed input size)
    weights_members: tuple[str, ...] = ("COCO_V1",)  # members of the enum; DEFAULT aliases the first


class WeightsError(ValueError):
    """A weights name that is no member of the model's enum."""


def is_weights_file(weights: str) -> bool:
    """A state dict file (a path or URI) rather than an enum member or random weights."""
    return "/" in weights


def canonical_weights(model: str, weights: str) -> str:
    """The one spelling of a weights choice, for the engine and the pipeline alike.

    Random weights in any case ("none", "None", "NONE") become `none`; an enum member in any case becomes
    its member name (`default` -> `DEFAULT`, `coco_v1` -> `COCO_V1`), checked against the model's enum, so
    a name that is no member fails before any shard starts; a state dict file is returned as given.
    """
    if is_weights_file(weights):
        return weights
    if weights.lower() == RANDOM_WEIGHTS:
        return RANDOM_WEIGHTS
    spec = MODELS[model]
    member = weights.upper()
    if member != "DEFAULT" and member not in spec.weights_members:
        raise WeightsError(
            f"{weights!r} is not a weights member of {model} ({spec.weights_enum}: "
            f"{', '.join(('DEFAULT', *spec.weights_members))}); or give a state dict file, or '{RANDOM_WEIGHTS}'"
        )
    return member


def weights_id(model: str, weights: str, sha256: str | None = None) -> str:
    """The id results and run records carry for these weights, as the engine records it.

    An enum member (or DEFAULT) becomes `EnumClass.MEMBER`, so `DEFAULT` and `COCO_V1` are one model version;
    `none` stays `none`; a state dict is its URI plus its content (`uri@sha256:HEX`), so a file replaced at
    the same path is another model version and an incremental run processes its images again. Lets the
    Airflow side find earlier results of the same model version without importing torch.
    """
    spec = MODELS[model]
    weights = canonical_weights(model, weights)
    if weights == RANDOM_WEIGHTS:
        return RANDOM_WEIGHTS
    if weights == "DEFAULT":
        return f"{spec.weights_enum}.{spec.weights_members[0]}"
    if not is_weights_file(weights):
        return f"{spec.weights_enum}.{weights}"
    return f"{weights}@sha256:{sha256.lower()}" if sha256 else weights


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("fasterrcnn_resnet50_fpn", "faster_rcnn", "FasterRCNN_ResNet50_FPN_Weights", True),
        ModelSpec("fasterrcnn_resnet50_fpn_v2", "faster_rcnn", "FasterRCNN_ResNet50_FPN_V2_Weights", True),
        ModelSpec(
            "fasterrcnn_mobilenet_v3_large_fpn",
            "faster_rcnn",
            "FasterRCNN_MobileNet_V3_Large_FPN_Weights",
            True,
        ),
        ModelSpec(
            "fasterrcnn_mobilenet_v3_large_320_fpn",
            "faster_rcnn",
            "FasterRCNN_MobileNet_V3_Large_320_FPN_Weights",
            True,
        ),
        ModelSpec("retinanet_resnet50_fpn", "retinanet", "RetinaNet_ResNet50_FPN_Weights", True),
        ModelSpec("retinanet_resnet50_fpn_v2", "retinanet", "RetinaNet_ResNet50_FPN_V2_Weights", True),
        ModelSpec("fcos_resnet50_fpn", "fcos", "FCOS_ResNet50_FPN_Weights", True),
        ModelSpec("ssd300_vgg16", "ssd", "SSD300_VGG16_Weights", False),
        ModelSpec("ssdlite320_mobilenet_v3_large", "ssdlite", "SSDLite320_MobileNet_V3_Large_Weights", False),
    )
}

PRECISIONS = ("fp32", "fp16", "bf16")
