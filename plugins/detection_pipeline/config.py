"""The run configuration: one validated, frozen object built once from the DAG's Params.

Each field declares its description and JSON schema beside it; `build_params` (the DAG's trigger form and
conf validation, built by the DAG file from the settings it loads) and the Python checks are both derived from those declarations, so the two cannot drift apart.
Params are not the only way in (tests, scripts, `from_dict` over XCom), so a `RunConfig` checks everything
again when it is constructed: an invalid one cannot exist. Every error is a `ConfigError` that starts with
the field's name.

Every task receives the config as a plain dict over XCom (`to_dict`) and rebuilds it with `from_dict`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from airflow.sdk import Param
from jsonschema import Draft202012Validator

from detection_engine import bounded_read
from detection_engine.catalog import (
    DEFAULT_MODEL,
    MODELS,
    PRECISIONS,
    PUBLISHED_SCORE_THRESHOLD,
    RANDOM_WEIGHTS,
    WeightsError,
    canonical_weights,
    is_weights_file,
)
from detection_pipeline import uris
from detection_pipeline.errors import ConfigError
from detection_pipeline.settings import Settings, load_settings

DEDUP_MODES = ("uri", "content")
SIZE_RANGE = (16, 4096)  # min_size / max_size, pixels
# A torchvision weights enum member name in any case (DEFAULT, coco_v1) or 'none' in any case; which names the
# model's enum has is checked by catalog.canonical_weights, which also gives the one spelling.
WEIGHTS_ENUM_MEMBER = r"^[A-Za-z][A-Za-z0-9_]*$" + uris.END

_LOCAL_OR_GCS_URI = uris.storage_uri_pattern()


# JSON Schema's bounds cannot refuse NaN (every comparison with it is false), and Python's json reads NaN, so a
# conf could carry one past `minimum`/`maximum` into a threshold or a timeout. Only NaN satisfies both of these
# contradictory bounds, so `not` this subschema refuses NaN and nothing else; every number field gets it.
NOT_NAN = {"type": "number", "minimum": 1, "maximum": 0}


def _types(schema: dict) -> list[str]:
    kind = schema["type"]
    return [kind] if isinstance(kind, str) else list(kind)


def _field(description: str, schema: dict, default: Any = dataclasses.MISSING, hint: str | None = None):
    """A RunConfig field with its Param description and JSON schema (and, for patterns, what they mean)."""
    if "number" in _types(schema):
        schema = {**schema, "not": NOT_NAN}
    return field(default=default, metadata={"description": description, "schema": schema, "hint": hint})


# The RunConfig fields that switch the engine's fast paths (detection_engine/fast_paths.py): they change a
# run's speed, not what it computes beyond rounding.
FAST_PATH_FIELDS = ("channels_last", "compile", "decode_on_device", "prefetch_to_device")


@dataclass(frozen=True)
class RunConfig:
    input_uri: str = _field(
        "Images to process: a gs:// or local prefix (listed recursively; image files only), or a manifest file "
        "(.txt one URI per line, .csv or .parquet with an image_uri column), local, gs:// or http(s). "
        "May contain {ds}, {ds_nodash}, {yyyy}, {mm}, {dd}, filled from the run's logical date.",
        {
            "type": "string",
            "minLength": 1,
            "maxLength": 4096,
            "pattern": uris.storage_uri_pattern(http=True),
        },
        hint="an absolute local path, file://, gs:// or http(s):// URI",
    )
    output_uri: str = _field(
        "Where runs write their files: {output_uri}/{run_id}/manifest.parquet, shards/, results/, metrics/. "
        "A gs:// or absolute local prefix, not inside input_uri.",
        {"type": "string", "minLength": 1, "maxLength": 4096, "pattern": _LOCAL_OR_GCS_URI},
        hint="an absolute local path, file:// or gs:// URI",
    )
    warehouse: str = _field(
        "Where results and run records are loaded: duckdb:///abs/path.duckdb or bigquery://project/dataset.",
        {
            "type": "string",
            "pattern": uris.WAREHOUSE_PATTERN,
        },
        hint="duckdb:///absolute/path.duckdb or bigquery://<project>/<dataset>",
    )
    model: str = _field(
        "torchvision detector.", {"type": "string", "enum": sorted(MODELS)}, default=DEFAULT_MODEL
    )
    weights: str = _field(
        "Weights: a member of the model's torchvision weights enum (DEFAULT, COCO_V1, ...), a state dict file "
        f"(.{', .'.join(uris.STATE_DICT_EXTENSIONS)}; absolute local path or gs://), or '{RANDOM_WEIGHTS}' "
        "for seeded random weights.",
        {
            "type": "string",
            "maxLength": 4096,
            "pattern": f"{WEIGHTS_ENUM_MEMBER}|{uris.storage_uri_pattern(extensions=uris.STATE_DICT_EXTENSIONS)}",
        },
        default="DEFAULT",
        hint=f"a weights enum member like DEFAULT or COCO_V1, a state dict path or gs:// URI, or '{RANDOM_WEIGHTS}'",
    )
    weights_sha256: str | None = _field(
        "SHA-256 (64 hex digits) the state dict file must have; only for weights given as a file.",
        {"type": ["null", "string"], "pattern": r"^[0-9a-fA-F]{64}$" + uris.END},
        default=None,
        hint="64 hexadecimal digits",
    )
    batch_size: int | str = _field(
        "Images per model call, or 'auto': 1 on a CPU (the fastest there, and detections equal to one image at "
        "a time), on a GPU the largest power of two up to 32 that fits half the free memory "
        "(detection_engine/auto_batch.py).",
        {"type": ["integer", "string"], "minimum": 1, "maximum": 256, "pattern": "^auto$" + uris.END},
        default="auto",
        hint="'auto' or an integer from 1 to 256",
    )
    score_threshold: float = _field(
        "Keep detections scoring at least this.", {"type": "number", "minimum": 0, "maximum": 1}, default=0.5
    )
    max_detections: int = _field(
        "Keep at most this many detections per image, best first.",
        {"type": "integer", "minimum": 1, "maximum": 1000},
        default=50,
    )
    min_size: int | None = _field(
        "Resize so the shorter side is this (torchvision's min_size); unset: the model's default (800).",
        {"type": ["null", "integer"], "minimum": SIZE_RANGE[0], "maximum": SIZE_RANGE[1]},
        default=None,
    )
    max_size: int | None = _field(
        "Cap on the longer side after resizing (torchvision's max_size); unset: the model's default (1333).",
        {"type": ["null", "integer"], "minimum": SIZE_RANGE[0], "maximum": SIZE_RANGE[1]},
        default=None,
    )
    precision: str = _field(
        "Inference precision; fp16/bf16 apply on GPU and on CPUs that compute them natively (bf16: AVX512-BF16/AMX); "
        "elsewhere the engine falls back to fp32 and records that.",
        {"type": "string", "enum": list(PRECISIONS)},
        default="fp32",
    )
    channels_last: bool = _field(
        "Store the model's convolution weights NHWC, a fast path: on a CPU 1.2-1.3x at 800 px with the same "
        "detections (mAP 1.0 against the default); not yet measured on a GPU (BENCHMARKS.md).",
        {"type": "boolean"},
        default=False,
    )
    compile: bool = _field(
        "torch.compile the model's backbone, a fast path: on a CPU 1.3-1.5x at 800 px with the same detections, "
        "after 14-30 s of compiling at each shard's first image (and at the first batch of a shape the "
        "compiler sets apart: logged), so it pays on large shards; falls back to eager if compiling fails "
        "(BENCHMARKS.md).",
        {"type": "boolean"},
        default=False,
    )
    decode_on_device: bool = _field(
        "Decode baseline JPEGs where the model runs (nvJPEG on a GPU, a batch at a time) instead of on the "
        "pod's CPUs, a fast path; every other image, and any JPEG the device cannot read, is decoded on the "
        "CPU as without it. On a CPU: the same detections, bit for bit, at the same speed; not yet measured "
        "on a GPU (BENCHMARKS.md).",
        {"type": "boolean"},
        default=False,
    )
    prefetch_to_device: bool = _field(
        "Stage each batch on the device (its host-to-device copies and, with decode_on_device, its JPEG "
        "decode, on a CUDA stream of their own) while the batch before it runs, a fast path; one more batch "
        "of inputs per GPU in memory. On a CPU: the same detections, speed within noise; not yet measured "
        "on a GPU (BENCHMARKS.md).",
        {"type": "boolean"},
        default=False,
    )
    max_image_bytes: int = _field(
        "Byte cap per image, enforced while streaming: a larger object is one too_large error row.",
        {"type": "integer", "minimum": 1024, "maximum": 1 << 34},
        default=bounded_read.DEFAULT_MAX_BYTES,
    )
    connect_timeout_s: float = _field(
        "Seconds to connect to an http(s) or gs:// server before the read is a timeout.",
        {"type": "number", "exclusiveMinimum": 0, "maximum": 600},
        default=bounded_read.DEFAULT_CONNECT_TIMEOUT_S,
    )
    read_timeout_s: float = _field(
        "Seconds a read from an http(s) or gs:// server may wait for the next bytes.",
        {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
        default=bounded_read.DEFAULT_READ_TIMEOUT_S,
    )
    image_timeout_s: float = _field(
        "Per-image deadline for fetch and decode: one stuck read becomes one timeout error row.",
        {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
        default=bounded_read.DEFAULT_TIMEOUT_S,
    )
    shard_size: int | str = _field(
        "Images per shard (one pod each), or 'auto': sized for ten minutes per pod from the images/s per GPU that "
        "earlier runs of this model on this hardware recorded (shard_size.py), 1000 without such runs. More "
        "shards than max_shards are never made, so shards grow instead.",
        {"type": ["integer", "string"], "minimum": 1, "maximum": 10_000_000, "pattern": "^auto$" + uris.END},
        default=1000,
        hint="'auto' or an integer from 1 to 10000000",
    )
    max_shards: int = _field(
        "At most this many shards (pods) per run; also capped by Airflow's core.max_map_length.",
        {"type": "integer", "minimum": 1, "maximum": 1024},
        default=256,
    )
    dedup_mode: str = _field(
        "Deduplicate by URI, or also by content hash (reads every input once more).",
        {"type": "string", "enum": list(DEDUP_MODES)},
        default="uri",
    )
    incremental: bool = _field(
        "Skip images this model and weights already processed in earlier runs (per the warehouse).",
        {"type": "boolean"},
        default=False,
    )
    ground_truth_uri: str | None = _field(
        "COCO annotation JSON (images, annotations, categories) whose file_names match the ends of the input "
        "URIs; when set, the evaluate step adds COCO box mAP to the run record and report.",
        {"type": ["null", "string"], "maxLength": 4096, "pattern": _LOCAL_OR_GCS_URI},
        default=None,
        hint="an absolute local path, file:// or gs:// URI",
    )
    eval_score_threshold: float = _field(
        "With ground_truth_uri: keep detections down to this score (and up to 100 per image) so mAP covers the "
        "whole precision-recall curve; the results table then holds them too.",
        {"type": "number", "minimum": 0, "maximum": 1},
        default=PUBLISHED_SCORE_THRESHOLD,
    )
    image: str = _field(
        "Container image of the detection engine (inference_image/).",
        {"type": "string", "maxLength": 512, "pattern": uris.IMAGE_REFERENCE},
        default="detection-engine:latest",
        hint="a container image reference like 'europe-docker.pkg.dev/project/repo/detection-engine:1.0'",
    )
    gpu_type: str = _field(
        "GKE accelerator label value of the GPU node pool (nvidia-l4, nvidia-tesla-t4, ...).",
        {"type": "string", "pattern": uris.DNS_LABEL},
        default="nvidia-l4",
        hint="a Kubernetes label value (a-z, 0-9 and '-')",
    )
    gpu_count: int = _field("GPUs per pod.", {"type": "integer", "minimum": 1, "maximum": 8}, default=1)
    machine_type: str = _field(
        "Machine type of the GPU nodes; the key of the cost estimate's price table.",
        {"type": "string", "pattern": uris.DNS_LABEL},
        default="g2-standard-8",
        hint="a machine type name (a-z, 0-9 and '-')",
    )
    spot: bool = _field(
        "Run the shard pods on GKE spot nodes: a fraction of the on-demand price, reclaimed with ~30 s notice. "
        "Shards commit as they go and a retry resumes where the pod stopped; the cost uses the spot prices.",
        {"type": "boolean"},
        default=False,
    )
    namespace: str = _field(
        "Kubernetes namespace of the shard pods.",
        {"type": "string", "pattern": uris.DNS_LABEL},
        default="default",
        hint="a Kubernetes namespace (RFC 1123 label)",
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _check_field(f, getattr(self, f.name)))
        self._check_combinations()

    def _check_combinations(self) -> None:
        if self.min_size is not None and self.max_size is not None and self.min_size > self.max_size:
            raise ConfigError(f"min_size: {self.min_size} is larger than max_size {self.max_size}")
        if not MODELS[self.model].resizable:
            for name in ("min_size", "max_size"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"{name}: {self.model} has a fixed input size; leave {name} unset")
        try:
            object.__setattr__(self, "weights", canonical_weights(self.model, self.weights))
        except WeightsError as err:
            raise ConfigError(f"weights: {err}") from None
        if self.weights_sha256 is not None and not is_weights_file(self.weights):
            raise ConfigError(
                f"weights_sha256: only a state dict file can be checked, but weights is {self.weights!r}"
            )
        if _is_prefix(self.input_uri) and uris.is_within(self.output_uri, self.input_uri):
            raise ConfigError(
                f"output_uri: {self.output_uri!r} lies inside input_uri {self.input_uri!r}; "
                "the run would list its own outputs"
            )

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_params(cls, params: Mapping[str, Any], logical_date: datetime | None) -> RunConfig:
        """The run's config from its Params (or any mapping), date placeholders of input_uri resolved."""
        values = _known_values(params)
        if isinstance(values.get("input_uri"), str):
            try:
                values["input_uri"] = uris.resolve_placeholders(values["input_uri"], logical_date)
            except uris.URIError as err:
                raise ConfigError(f"input_uri: {err}") from None
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """Rebuild (and re-check) a config from `to_dict`'s output, e.g. after an XCom round trip."""
        return cls(**_known_values(data))

    # -- records -------------------------------------------------------------------------------

    def redacted(self) -> dict:
        """`to_dict` with credentials and signed-URL tokens masked: what run records and logs may keep."""
        data = self.to_dict()
        for name in ("input_uri", "output_uri", "weights"):
            data[name] = uris.redact(data[name])
        return data

    def to_json(self) -> str:
        return json.dumps(self.redacted(), sort_keys=True, separators=(",", ":"))


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(RunConfig)}
# Fields whose default is a deployment setting rather than a constant.
FROM_SETTINGS = (
    "input_uri",
    "output_uri",
    "warehouse",
    "image",
    "namespace",
    "gpu_type",
    "machine_type",
    "spot",
)


def build_params(settings: Settings) -> dict[str, Param]:
    """The DAG's Params: one per RunConfig field, defaults from the deployment's settings."""
    params = {}
    for name, f in FIELDS.items():
        default = getattr(settings, name) if name in FROM_SETTINGS else f.default
        params[name] = Param(default, description=f.metadata["description"], **f.metadata["schema"])
    return params


def param_defaults(params: Mapping[str, Param] | None = None) -> dict[str, Any]:
    """What a run whose conf gives nothing runs with: the Params' defaults (the deployment's when not given)."""
    params = build_params(load_settings()) if params is None else params
    return {name: param.value for name, param in params.items()}


# -- checks ------------------------------------------------------------------------------------


def _known_values(data: Mapping[str, Any]) -> dict[str, Any]:
    values = {key: data[key] for key in data}
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), FIELDS, n=1)
            hints.append(f"{key} (did you mean {close[0]}?)" if close else str(key))
        raise ConfigError(f"{unknown[0]}: unknown parameter(s): {', '.join(hints)}")
    missing = [name for name, f in FIELDS.items() if f.default is dataclasses.MISSING and name not in values]
    if missing:
        raise ConfigError(f"{missing[0]}: required but not given (missing: {', '.join(missing)})")
    return values


def _check_field(f: dataclasses.Field, value: Any) -> Any:
    """The field's value, checked against its JSON schema and its meaning, in canonical form."""
    schema = f.metadata["schema"]
    if isinstance(value, float) and value.is_integer() and "integer" in _types(schema):
        value = int(value)  # JSON has one number type; 8.0 is the integer 8 to the schema too
    errors = list(Draft202012Validator(schema).iter_errors(value))
    type_errors = [e for e in errors if e.validator == "type"]
    if type_errors:
        raise ConfigError(
            f"{f.name}: must be {_describe_types(schema)}, got {type(value).__name__} {value!r}"
        )
    check = _MEANING.get(f.name)
    if check is not None and value is not None:
        try:
            value = check(value)
        except uris.URIError as err:
            raise ConfigError(f"{f.name}: {err}") from None
    for err in Draft202012Validator(schema).iter_errors(value):
        raise ConfigError(f"{f.name}: {_explain(err, value, schema, f.metadata['hint'])}")
    return value


def _describe_types(schema: dict) -> str:
    words = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "true or false"}
    return " or ".join("null" if t == "null" else words[t] for t in _types(schema))


def _explain(err, value: Any, schema: dict, hint: str | None) -> str:
    if err.validator == "enum":
        return f"must be one of {', '.join(map(str, schema['enum']))}, got {value!r}"
    if err.validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return f"must be {_range(schema)}, got {value!r}"
    if err.validator == "not" and err.validator_value is NOT_NAN:
        return f"must be a finite number, got {value!r}"
    if err.validator == "pattern":
        return f"{value!r} is not {hint or 'valid'}"
    if err.validator in ("minLength", "maxLength"):
        return f"must be {schema.get('minLength', 0)} to {schema.get('maxLength', 'any')} characters long"
    return err.message


def _range(schema: dict) -> str:
    """The schema's bounds in words: 'from 1 to 256', 'more than 0 and at most 600'."""
    if "minimum" in schema and "maximum" in schema:
        return f"from {schema['minimum']} to {schema['maximum']}"
    words = []
    for key, text in (
        ("minimum", "at least"),
        ("exclusiveMinimum", "more than"),
        ("maximum", "at most"),
        ("exclusiveMaximum", "less than"),
    ):
        if key in schema:
            words.append(f"{text} {schema[key]}")
    return " and ".join(words)


def _input_uri(value: str) -> str:
    if uris.placeholders(value):
        raise uris.URIError(
            f"{value!r} has date placeholders; build the config with from_params(..., logical_date)"
        )
    canonical = uris.check_storage_uri(value, http=True)
    if canonical.startswith(("http://", "https://")):
        uris.check_http_authority(canonical)
        if not _is_manifest_file(canonical):
            raise uris.URIError(
                f"{value!r}: an http(s) input must be a manifest file (.{', .'.join(uris.MANIFEST_EXTENSIONS)}); "
                "only local and gs:// prefixes can be listed"
            )
    return uris.as_prefix(canonical)


def _output_uri(value: str) -> str:
    return uris.as_prefix(uris.check_storage_uri(value))


def _weights(value: str) -> str:
    if value == RANDOM_WEIGHTS or re.fullmatch(WEIGHTS_ENUM_MEMBER, value):
        return value
    canonical = uris.check_storage_uri(value) if "/" in value else value
    if uris.extension(canonical) not in uris.STATE_DICT_EXTENSIONS:
        raise uris.URIError(
            f"{value!r} is neither a weights enum member (like DEFAULT or COCO_V1), '{RANDOM_WEIGHTS}', "
            f"nor a state dict file (.{', .'.join(uris.STATE_DICT_EXTENSIONS)}, absolute path or gs://)"
        )
    return canonical


_MEANING = {
    "input_uri": _input_uri,
    "output_uri": _output_uri,
    "ground_truth_uri": uris.check_storage_uri,
    "warehouse": uris.check_warehouse,
    "weights": _weights,
    "weights_sha256": str.lower,
    "image": uris.check_image_reference,
    "gpu_type": uris.check_dns_label,
    "machine_type": uris.check_dns_label,
    "namespace": uris.check_dns_label,
}


def _is_manifest_file(uri: str) -> bool:
    return uris.extension(uri) in uris.MANIFEST_EXTENSIONS


def _is_prefix(input_uri: str) -> bool:
    return not _is_manifest_file(input_uri)
