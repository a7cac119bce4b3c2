"""The detectors this project supports and every fact about them, without importing torch.

One `ModelSpec` per model holds what the rest of the code needs to know: its builder and weights enum,
whether min/max size apply, its family's post-processing keyword arguments and torchvision's defaults for
them, the COCO box mAP torchvision publishes for its weights, and the COCO label set. The Airflow side
validates run config against it; the engine's model registry (`models.py`) builds each entry with
torchvision. tests/engine/test_catalog.py checks every fact against torchvision itself.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MODEL = "fasterrcnn_resnet50_fpn"
RANDOM_WEIGHTS = "none"
# Bounds on reading a state dict file, for the engine that loads it and the Airflow side that checksums it first.
STATE_DICT_MAX_BYTES = 4 << 30  # torchvision's largest detection state dict is ~170 MB
STATE_DICT_TIMEOUT_S = 1800.0


# The score threshold torchvision's published mAP was measured at (Faster R-CNN's box_score_thresh); the
# evaluate step's default, so a run's mAP is comparable with `ModelSpec.published_box_map`.
PUBLISHED_SCORE_THRESHOLD = 0.05

# torchvision's label ids for every COCO_V1 detector: index = label id = COCO category id (1..90, with the
# ten ids COCO never used as "N/A"). Equal to torchvision.models._meta._COCO_CATEGORIES (a test checks).
COCO_V1_CATEGORIES: tuple[str, ...] = (
    "__background__", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse",
    "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "N/A", "backpack", "umbrella", "N/A", "N/A",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat",
    "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "N/A", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza",
    "donut", "cake", "chair", "couch", "potted plant", "bed", "N/A", "dining table", "N/A", "N/A", "toilet",
    "N/A", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "N/A", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip


@dataclass(frozen=True)
class Family:
    """Post-processing of one detector family: the builder's keyword arguments and torchvision's defaults."""

    name: str  # faster_rcnn | retinanet | fcos | ssd | ssdlite
    score_kwarg: str  # builder keyword of the score threshold below which boxes are dropped
    detections_kwarg: str  # builder keyword of the cap on boxes per image
    default_score: float  # torchvision's default for score_kwarg
    default_detections: int  # torchvision's default for detections_kwarg


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family("faster_rcnn", "box_score_thresh", "box_detections_per_img", 0.05, 100),
        Family("retinanet", "score_thresh", "detections_per_img", 0.05, 300),
        Family("fcos", "score_thresh", "detections_per_img", 0.2, 100),
        Family("ssd", "score_thresh", "detections_per_img", 0.01, 200),
        Family("ssdlite", "score_thresh", "detections_per_img", 0.001, 300),
    )
}


@dataclass(frozen=True)
class ModelSpec:
    name: str  # torchvision.models.detection builder name
    family: str  # a key of FAMILIES
    weights_enum: str  # torchvision.models.detection weights enum class name
    resizable: bool  # whether min_size/max_size apply (SSD models have a fixed input size)
    published_box_map: float  # torchvision's COCO val2017 box mAP of the COCO_V1 weights (meta "_metrics")
    weights_members: tuple[str, ...] = ("COCO_V1",)  # members of the enum; DEFAULT aliases the first

    @property
    def post_processing(self) -> Family:
        return FAMILIES[self.family]


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
        ModelSpec("fasterrcnn_resnet50_fpn", "faster_rcnn", "FasterRCNN_ResNet50_FPN_Weights", True, 37.0),
        ModelSpec(
            "fasterrcnn_resnet50_fpn_v2", "faster_rcnn", "FasterRCNN_ResNet50_FPN_V2_Weights", True, 46.7
        ),
        ModelSpec(
            "fasterrcnn_mobilenet_v3_large_fpn",
            "faster_rcnn",
            "FasterRCNN_MobileNet_V3_Large_FPN_Weights",
            True,
            32.8,
        ),
        ModelSpec(
            "fasterrcnn_mobilenet_v3_large_320_fpn",
            "faster_rcnn",
            "FasterRCNN_MobileNet_V3_Large_320_FPN_Weights",
            True,
            22.8,
        ),
        ModelSpec("retinanet_resnet50_fpn", "retinanet", "RetinaNet_ResNet50_FPN_Weights", True, 36.4),
        ModelSpec("retinanet_resnet50_fpn_v2", "retinanet", "RetinaNet_ResNet50_FPN_V2_Weights", True, 41.5),
        ModelSpec("fcos_resnet50_fpn", "fcos", "FCOS_ResNet50_FPN_Weights", True, 39.2),
        ModelSpec("ssd300_vgg16", "ssd", "SSD300_VGG16_Weights", False, 25.1),
        ModelSpec(
            "ssdlite320_mobilenet_v3_large", "ssdlite", "SSDLite320_MobileNet_V3_Large_Weights", False, 21.3
        ),
    )
}

PRECISIONS = ("fp32", "fp16", "bf16")
