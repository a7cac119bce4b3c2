"""The model registry: build any detector of `catalog.MODELS` with the weights the run asks for, once.

Weights come in three kinds, told apart by the `--weights` string:

- a member of the model's torchvision weights enum (`DEFAULT`, `COCO_V1`, ...): downloaded into TORCH_HOME
  (or baked into the image by `prefetch_weights`), hash-checked by torchvision, sha256 recorded;
- `none`: random init seeded by `--seed`, no backbone weights either; every row says `random_weights=True`;
- anything else is a state dict path or URI (local, file://, gs://) read through fsspec, its sha256 recorded and
  checked against `--weights-sha256` when given. The number of classes is read from the state dict itself.

Every failure raises `ModelLoadError` with one line that says what to do; the CLI turns it into exit code 3.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.models import get_model_builder, get_model_weights

from detection_engine.bounded_read import ReadRefused
from detection_engine.catalog import (
    COCO_V1_CATEGORIES,
    MODELS,
    PRECISIONS,
    RANDOM_WEIGHTS,
    STATE_DICT_MAX_BYTES,
    STATE_DICT_TIMEOUT_S,
    ModelSpec,
    WeightsError,
    canonical_weights,
)
from detection_engine.catalog import (
    weights_id as catalog_weights_id,
)
from detection_engine.devices import DeviceError, resolve_devices
from detection_engine.redaction import redact_text
from detection_engine.storage import ReadLimits, read_bytes

log = logging.getLogger(__name__)

_COCO_NUM_CLASSES = len(COCO_V1_CATEGORIES)


class ModelLoadError(Exception):
    """The model or its weights cannot be loaded; the message is the one line the user sees."""


@dataclass(frozen=True)
class ModelOptions:
    name: str
    weights: str = "DEFAULT"
    weights_sha256: str | None = None
    score_threshold: float = 0.5
    max_detections: int = 50
    min_size: int | None = None
    max_size: int | None = None
    device: str = "auto"
    precision: str = "fp32"
    seed: int = 0


@dataclass
class LoadedModel:
    """A detector in eval mode on its device, with what the run records about its weights."""

    model: nn.Module
    spec: ModelSpec
    device: torch.device
    precision: str  # the precision actually used (fp32 on CPU whatever was asked)
    weights_id: str
    weights_sha256: str | None
    random_weights: bool
    categories: list[str]
    load_s: float = 0.0

    def label_name(self, label_id: int) -> str:
        return self.categories[label_id] if 0 <= label_id < len(self.categories) else str(label_id)


def resolve_device(requested: str) -> torch.device:
    """One device (`auto`: the first GPU, else the CPU); the list form is `devices.resolve_devices`."""
    devices = resolve_devices(requested)
    if len(devices) != 1 and requested != "auto":
        raise DeviceError(f"one device expected, got {requested!r}")
    return devices[0]


def effective_precision(requested: str, device: torch.device) -> str:
    """The precision that runs: fp16/bf16 under autocast on CUDA, and on a CPU that computes it natively
    (bf16: AVX512-BF16 or AMX, as on Sapphire Rapids and later; fp16: AMX-FP16). Elsewhere it falls back to
    fp32 with a warning, so one configuration runs on a GPU pod and in the embedded default alike; emulated
    half precision would be slower than fp32. Metrics record what actually ran."""
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; use one of {', '.join(PRECISIONS)}")
    if requested == "fp32" or device.type == "cuda":
        return requested
    if device.type == "cpu" and cpu_computes(requested):
        return requested
    log.warning(
        "precision %s needs a CUDA device or a CPU that computes it natively (%s); running fp32 on %s",
        requested,
        _CPU_FEATURES[requested][0],
        device.type,
    )
    return "fp32"


# The CPU features that compute each reduced precision in hardware: (what to call them, their checks).
_CPU_FEATURES = {
    "bf16": ("AVX512-BF16 or AMX", ("_is_avx512_bf16_supported", "_is_amx_tile_supported")),
    "fp16": ("AMX-FP16", ("_is_amx_fp16_supported",)),
}


def cpu_computes(precision: str) -> bool:
    """Whether this CPU has the instructions that run `precision` natively (torch.cpu's feature checks)."""
    checks = _CPU_FEATURES[precision][1]
    return any(getattr(torch.cpu, check, lambda: False)() for check in checks)


def weights_enum_member(model_name: str, weights: str):
    """The torchvision weights enum member named `weights`, or None when the string names none."""
    enum = get_model_weights(model_name)
    return enum[weights] if weights in enum.__members__ else None


def load_model(options: ModelOptions) -> LoadedModel:
    """Build, load and place the model; called once per process."""
    started = time.perf_counter()
    spec = MODELS.get(options.name)
    if spec is None:
        raise ModelLoadError(f"unknown model {options.name!r}; supported: {', '.join(MODELS)}")
    device = resolve_device(options.device)
    precision = effective_precision(options.precision, device)
    kwargs = _builder_kwargs(spec, options)
    builder = get_model_builder(spec.name)
    try:
        weights = canonical_weights(spec.name, options.weights)  # the pipeline's spelling, too
    except WeightsError as exc:
        raise ModelLoadError(str(exc)) from None

    if weights == RANDOM_WEIGHTS:
        torch.manual_seed(options.seed)
        model = builder(weights=None, weights_backbone=None, num_classes=_COCO_NUM_CLASSES, **kwargs)
        weights_id, sha256, random_weights = RANDOM_WEIGHTS, None, True
        categories = list(COCO_V1_CATEGORIES)
    elif (member := weights_enum_member(spec.name, weights)) is not None:
        model = _build_pretrained(builder, spec, member, kwargs)
        weights_id, random_weights = catalog_weights_id(spec.name, member.name), False
        sha256 = _cached_file_sha256(member.url)
        categories = list(member.meta.get("categories") or COCO_V1_CATEGORIES)
    else:
        state_dict, sha256 = _read_state_dict(spec, options.weights, options.weights_sha256)
        num_classes = _num_classes_of(spec, builder, state_dict, kwargs)
        model = builder(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
        try:
            model.load_state_dict(state_dict)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise ModelLoadError(f"state dict {options.weights} does not fit {spec.name}: {first}") from None
        weights_id, random_weights = catalog_weights_id(spec.name, weights, sha256), False
        categories = list(COCO_V1_CATEGORIES) if num_classes == _COCO_NUM_CLASSES else []

    model.eval().to(device)
    load_s = time.perf_counter() - started
    return LoadedModel(model, spec, device, precision, weights_id, sha256, random_weights, categories, load_s)


def _builder_kwargs(spec: ModelSpec, options: ModelOptions) -> dict:
    """Image size overrides, and post-processing limits loose enough for the engine's own threshold and cap.

    Lowering the model's internal score threshold to the engine's never changes the detections above the
    higher one (NMS only lets a box be suppressed by a higher-scoring one), so the engine's output equals
    torchvision's default output filtered at the engine's threshold.
    """
    family = spec.post_processing
    kwargs: dict = {
        family.score_kwarg: min(family.default_score, options.score_threshold),
        family.detections_kwarg: max(family.default_detections, options.max_detections),
    }
    if options.min_size is not None or options.max_size is not None:
        if spec.resizable:
            if options.min_size is not None:
                kwargs["min_size"] = options.min_size
            if options.max_size is not None:
                kwargs["max_size"] = options.max_size
        else:
            log.warning("%s has a fixed input size; ignoring --min-size/--max-size", spec.name)
    return kwargs


def _build_pretrained(builder, spec: ModelSpec, member, kwargs: dict) -> nn.Module:
    try:
        return builder(weights=member, progress=False, **kwargs)
    except Exception as exc:  # download (URLError, HTTPError, OSError) or hash check failures
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"cannot load pretrained weights {member.name} for {spec.name} from {member.url} ({reason}); "
            "bake them into the image (prefetch_weights), pass a local state dict with --weights PATH "
            "[--weights-sha256 HEX], or use --weights none for random weights"
        ) from None


def _cached_file_sha256(url: str) -> str | None:
    """sha256 of the downloaded enum weights, so the run records exactly which file it used."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    return _sha256_file(path) if path.is_file() else None


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_state_dict(spec: ModelSpec, uri: str, expected_sha256: str | None) -> tuple[dict, str]:
    try:  # bounded: a FIFO, a device or a huge file fails the shard instead of hanging or filling memory
        data = read_bytes(uri, ReadLimits(max_bytes=STATE_DICT_MAX_BYTES, timeout_s=STATE_DICT_TIMEOUT_S))
    except ReadRefused as exc:
        if exc.code == "not_found":
            enum = get_model_weights(spec.name)
            raise ModelLoadError(
                f"--weights {redact_text(uri)!r} is neither a weights name of {spec.name} "
                f"({', '.join(enum.__members__)}) nor a readable state dict file; or use --weights none"
            ) from None
        raise ModelLoadError(f"cannot read state dict {redact_text(uri)}: {exc.reason}") from None
    sha256 = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and sha256 != expected_sha256.lower():
        raise ModelLoadError(f"state dict {uri} has sha256 {sha256}, expected {expected_sha256}")
    try:
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(f"{uri} is not a loadable state dict: {type(exc).__name__}: {exc}") from None
    # torchvision's reference scripts save {"model": state_dict, "optimizer": ...}.
    if isinstance(loaded, dict) and isinstance(loaded.get("model"), dict):
        loaded = loaded["model"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ModelLoadError(f"{uri} does not hold a state dict (a mapping of names to tensors)")
    return loaded, sha256


def _num_classes_of(spec: ModelSpec, builder, state_dict: dict, kwargs: dict) -> int:
    """Read the class count from the classification head's first class-dependent tensor.

    Which tensors depend on the class count (and by what factor: anchors per location) differs per family,
    so it is found by building the model twice on the meta device (no memory, no init) and comparing shapes.
    """
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        one = builder(weights=None, weights_backbone=None, num_classes=1, **kwargs).state_dict()
        two = builder(weights=None, weights_backbone=None, num_classes=2, **kwargs).state_dict()
    for key, tensor in one.items():
        if tensor.shape != two[key].shape and key in state_dict:
            per_class = two[key].shape[0] - tensor.shape[0]
            rows = state_dict[key].shape[0]
            if rows % per_class == 0:
                return rows // per_class
            raise ModelLoadError(f"state dict has {rows} rows in {key}, not a multiple of {per_class}")
    raise ModelLoadError(f"state dict does not look like a {spec.name} state dict (no classification head)")
