"""RunConfig and the DAG's Params: one set of rules, applied by Airflow's Param schemas and again in Python."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from airflow.sdk.definitions.param import ParamsDict
from airflow.sdk.exceptions import ParamValidationError
from hypothesis import given, settings
from hypothesis import strategies as st

from detection_engine.catalog import MODELS
from detection_pipeline import config as config_module
from detection_pipeline.config import FIELDS, ConfigError, RunConfig, build_params
from detection_pipeline.settings import load_settings
from tests.pipeline.storage_uris import STORAGE_URIS

NOV_21 = datetime(2026, 11, 21, 3, 0, tzinfo=UTC)

PARAMS = build_params(load_settings())  # what the batch DAG file builds


def _params(**overrides) -> dict:
    """A complete, valid conf (what Airflow hands validate_config), with overrides."""
    values = {name: param.value for name, param in PARAMS.items()}
    values.update(
        input_uri="gs://images/incoming",
        output_uri="gs://detections/runs",
        warehouse="bigquery://my-project/detection",
    )
    values.update(overrides)
    return values


def _schema_rejects(name: str, value) -> bool:
    param = copy.copy(PARAMS[name])  # resolve() stores the value on success
    try:
        param.resolve(value)
    except ParamValidationError:
        return True
    return False


# -- Params ----------------------------------------------------------------------------------------


def test_every_field_is_a_param_with_a_description_and_a_typed_schema():
    assert set(PARAMS) == {f.name for f in dataclasses.fields(RunConfig)}
    for name, param in PARAMS.items():
        assert param.description, name
        assert param.schema.get("type"), name


def test_param_defaults_are_valid_and_build_a_config():
    resolved = ParamsDict(copy.deepcopy(PARAMS)).validate()

    config = RunConfig.from_params(resolved, NOV_21)

    assert config.model == "fasterrcnn_resnet50_fpn"
    assert config.input_uri == load_settings().input_uri


def test_deployment_settings_are_the_param_defaults():
    settings = dataclasses.replace(
        load_settings({}),
        input_uri="gs://images/{ds}",
        output_uri="gs://out/runs",
        warehouse="bigquery://my-project/detection",
        image="registry.example/detection-engine:2.0",
        namespace="detection",
        gpu_type="nvidia-tesla-t4",
        machine_type="n1-standard-8",
    )

    params = build_params(settings)

    assert params["input_uri"].value == "gs://images/{ds}"
    assert params["warehouse"].value == "bigquery://my-project/detection"
    assert params["image"].value == "registry.example/detection-engine:2.0"
    assert params["gpu_type"].value == "nvidia-tesla-t4"
    assert params["batch_size"].value == FIELDS["batch_size"].default == "auto"
    assert params["model"].schema["enum"] == sorted(MODELS)


# -- accepted values and their canonical form --------------------------------------------------------


def test_a_config_round_trips_through_a_dict():
    config = RunConfig.from_params(
        _params(weights="gs://models/detector.pth", weights_sha256="AB" * 32), NOV_21
    )

    data = json.loads(json.dumps(config.to_dict()))  # as XCom carries it

    assert RunConfig.from_dict(data) == config


def test_values_are_stored_in_canonical_form():
    config = RunConfig.from_params(
        _params(
            input_uri="file:///data//images/./today/",
            output_uri="gs://detections//runs/",
            weights="file:///models/detector.pth",
            weights_sha256="AB" * 32,
            batch_size=16.0,  # JSON has one number type
        ),
        NOV_21,
    )

    assert config.input_uri == "/data/images/today"
    assert config.output_uri == "gs://detections/runs"
    assert config.weights == "/models/detector.pth"
    assert config.weights_sha256 == "ab" * 32
    assert config.batch_size == 16 and isinstance(config.batch_size, int)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("gs://images/{ds}/", "gs://images/2026-11-21"),
        ("gs://images/{yyyy}/{mm}/{dd}", "gs://images/2026/11/21"),
        ("/data/list-{ds_nodash}.txt", "/data/list-20261121.txt"),
        ("gs://images/no-placeholders", "gs://images/no-placeholders"),
    ],
)
def test_input_placeholders_are_filled_from_the_logical_date(template, expected):
    assert RunConfig.from_params(_params(input_uri=template), NOV_21).input_uri == expected


def test_placeholders_use_the_utc_date_of_the_logical_date():
    late_evening_in_new_york = datetime(2026, 11, 20, 22, 0, tzinfo=timezone(timedelta(hours=-5)))

    config = RunConfig.from_params(_params(input_uri="gs://images/{ds}"), late_evening_in_new_york)

    assert config.input_uri == "gs://images/2026-11-21"


@pytest.mark.parametrize("weights", ["DEFAULT", "COCO_V1", "none", "/models/a b.pt", "gs://models/x.bin"])
def test_accepted_weights(weights):
    assert RunConfig.from_params(_params(weights=weights), NOV_21).weights == weights
    assert not _schema_rejects("weights", weights)


@pytest.mark.parametrize(
    ("field", "given", "canonical"),
    [
        ("input_uri", " GS://images/today\n", "gs://images/today"),
        ("input_uri", "HTTPS://Example.com/lists/today.CSV", "https://Example.com/lists/today.CSV"),
        ("output_uri", "\tFILE:///data/runs/", "/data/runs"),
        ("weights", "Gs://models/x.PT", "gs://models/x.PT"),
        ("weights", "/models/x.pth/.", "/models/x.pth"),
        ("ground_truth_uri", " gs://truth//instances.json", "gs://truth/instances.json"),
    ],
)
def test_storage_uris_in_any_spelling_the_run_accepts_pass_the_form_too(field, given, canonical):
    assert getattr(RunConfig.from_params(_params(**{field: given}), NOV_21), field) == canonical
    assert not _schema_rejects(field, given)


@pytest.mark.parametrize(
    ("given", "canonical"),
    [("NONE", "none"), ("None", "none"), ("default", "DEFAULT"), ("coco_v1", "COCO_V1")],
)
def test_weights_names_have_one_spelling(given, canonical):
    """The spelling the engine uses too (catalog.canonical_weights), so both record one weights id."""
    assert RunConfig.from_params(_params(weights=given), NOV_21).weights == canonical
    assert not _schema_rejects("weights", given)


@pytest.mark.parametrize(
    "image",
    [
        "detection-engine:latest",
        "europe-docker.pkg.dev/my-project/repo/detection-engine:1.2.3",
        "localhost:5000/detection_engine",
        "registry.example/team/engine@sha256:" + "a" * 64,
    ],
)
def test_accepted_images(image):
    assert RunConfig.from_params(_params(image=image), NOV_21).image == image
    assert not _schema_rejects("image", image)


@pytest.mark.parametrize(
    "warehouse",
    [
        "duckdb:///var/lib/warehouse.duckdb",
        "duckdb:////abs/w.duckdb",
        "bigquery://my-project/detection?location=EU",
    ],
)
def test_accepted_warehouses(warehouse):
    assert RunConfig.from_params(_params(warehouse=warehouse), NOV_21).warehouse == warehouse
    assert not _schema_rejects("warehouse", warehouse)


def test_http_input_is_allowed_for_a_manifest_file():
    config = RunConfig.from_params(_params(input_uri="https://example.com/lists/today.csv"), NOV_21)

    assert config.input_uri == "https://example.com/lists/today.csv"


def test_output_next_to_the_input_is_fine_when_the_input_is_a_manifest_file():
    config = RunConfig.from_params(
        _params(input_uri="gs://bkt/lists/today.txt", output_uri="gs://bkt/lists"), NOV_21
    )

    assert config.output_uri == "gs://bkt/lists"


# -- rejections ------------------------------------------------------------------------------------

# (field, value, words the message must contain, whether the Param schema also rejects it)
REJECTED = [
    ("input_uri", "s3://bucket/images", "scheme 's3' is not supported", True),
    ("input_uri", "images/today", "relative path", True),
    ("input_uri", "/data/../etc", "'..' segment", False),
    ("input_uri", "/data/to\x00day", "control character", True),
    ("input_uri", "gs://images/{date}", "unknown placeholder", False),
    ("input_uri", "gs://images/{ds", "unmatched", False),
    ("input_uri", "https://example.com/images/", "must be a manifest file", False),
    ("input_uri", "http://127.0.0.1:99999/list.txt", "Port out of range", False),
    ("input_uri", "http://[::1/list.txt", "Invalid IPv6 URL", False),
    ("input_uri", "http://:80/list.txt", "has no host", False),
    ("input_uri", "https://user:secret@host:port/list.txt?sig=TOKEN", "not a valid URL", False),
    ("input_uri", "gs://B/images", "valid bucket name", False),
    ("input_uri", "FTP://host/images", "scheme 'ftp' is not supported", True),
    ("input_uri", 42, "must be a string", True),
    ("output_uri", "https://example.com/out", "http(s) is allowed only for input_uri", True),
    ("output_uri", "gs://detections/{ds}", "only input_uri may use", False),
    ("output_uri", "", "non-empty", True),
    ("ground_truth_uri", "/data/../instances.json", "'..' segment", False),
    ("ground_truth_uri", "gs://truth/{ds}.json", "only input_uri may use", False),
    ("ground_truth_uri", "https://example.com/instances.json", "http(s) is allowed only for input_uri", True),
    ("warehouse", "duckdb://relative.duckdb", "expected duckdb:///", True),
    ("warehouse", "duckdb:///data/w.sqlite", "expected duckdb:///", True),
    ("warehouse", "bigquery://my-project/detection`; DROP TABLE results; --", "expected bigquery://", True),
    ("warehouse", "bigquery://p/detection", "expected bigquery://", True),
    ("warehouse", "duckdb:///data/../w.duckdb", "'..' segment", False),
    ("model", "yolov8", "must be one of", True),
    ("weights", "IMAGENET1K_V1", "not a weights member of fasterrcnn_resnet50_fpn", False),
    ("weights", "COCO-V1", "neither a weights enum member", True),
    ("weights", "models/detector.pth", "relative path", True),
    ("weights", "/models/detector.onnx", "neither a weights enum member", True),
    ("weights", "http://example.com/model.pth", "http(s) is allowed only for input_uri", True),
    ("weights_sha256", "abc", "64 hexadecimal digits", True),
    ("weights_sha256", "g" * 64, "64 hexadecimal digits", True),
    ("batch_size", 0, "must be from 1 to 256", True),
    ("batch_size", 257, "must be from 1 to 256", True),
    ("batch_size", True, "must be an integer", True),
    ("batch_size", "8", "is not 'auto' or an integer from 1 to 256", True),
    ("batch_size", "Auto", "is not 'auto' or an integer from 1 to 256", True),
    ("batch_size", 8.5, "must be an integer", True),
    ("score_threshold", -0.1, "must be from 0 to 1", True),
    ("score_threshold", 1.01, "must be from 0 to 1", True),
    ("max_detections", 0, "must be from 1 to 1000", True),
    ("max_detections", 1001, "must be from 1 to 1000", True),
    ("min_size", 0, "must be from 16 to 4096", True),
    ("max_size", -5, "must be from 16 to 4096", True),
    ("precision", "int8", "must be one of fp32, fp16, bf16", True),
    ("shard_size", 0, "must be from 1 to", True),
    ("max_shards", 1025, "must be from 1 to 1024", True),
    ("max_shards", 0, "must be from 1 to 1024", True),
    ("dedup_mode", "pixels", "must be one of uri, content", True),
    ("incremental", "yes", "must be true or false", True),
    ("image", "Detection Engine:latest", "not a container image reference", True),
    ("image", "engine:tag with space", "not a container image reference", True),
    ("gpu_type", "NVIDIA_L4", "RFC 1123", True),
    ("gpu_count", 0, "must be from 1 to 8", True),
    ("gpu_count", 9, "must be from 1 to 8", True),
    ("machine_type", "g2 standard", "RFC 1123", True),
    ("namespace", "Detection", "RFC 1123", True),
    ("namespace", "-detection", "RFC 1123", True),
    ("namespace", "a" * 64, "RFC 1123", True),
]


@pytest.mark.parametrize(
    ("field", "value", "words", "schema_too"), REJECTED, ids=[f"{r[0]}={r[1]!r}" for r in REJECTED]
)
def test_a_bad_value_is_refused_naming_its_field(field, value, words, schema_too):
    with pytest.raises(ConfigError) as caught:
        RunConfig.from_params(_params(**{field: value}), NOV_21)

    assert str(caught.value).startswith(f"{field}: ")
    assert words in str(caught.value)
    if schema_too:
        assert _schema_rejects(field, value), "the Param schema should refuse it before the run starts"


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"min_size": 900, "max_size": 800}, "min_size", "larger than max_size"),
        ({"model": "ssd300_vgg16", "min_size": 320}, "min_size", "fixed input size"),
        ({"model": "ssdlite320_mobilenet_v3_large", "max_size": 320}, "max_size", "fixed input size"),
        ({"weights": "DEFAULT", "weights_sha256": "a" * 64}, "weights_sha256", "only a state dict file"),
        ({"weights": "none", "weights_sha256": "a" * 64}, "weights_sha256", "only a state dict file"),
        (
            {"input_uri": "gs://bkt/images", "output_uri": "gs://bkt/images/runs"},
            "output_uri",
            "inside input_uri",
        ),
        ({"input_uri": "/data", "output_uri": "file:///data/"}, "output_uri", "inside input_uri"),
    ],
)
def test_combinations_are_checked(overrides, field, words):
    with pytest.raises(ConfigError) as caught:
        RunConfig.from_params(_params(**overrides), NOV_21)

    assert str(caught.value).startswith(f"{field}: ")
    assert words in str(caught.value)


def test_unknown_keys_are_refused_with_a_suggestion():
    with pytest.raises(
        ConfigError, match=r"^batchsize: unknown parameter\(s\): batchsize \(did you mean batch_size\?\)"
    ):
        RunConfig.from_params(_params(batchsize=4), NOV_21)


def test_required_fields_must_be_given():
    params = _params()
    del params["warehouse"]

    with pytest.raises(ConfigError, match="^warehouse: required"):
        RunConfig.from_params(params, NOV_21)


def test_date_placeholders_need_a_logical_date():
    with pytest.raises(ConfigError, match="^input_uri: .* no logical date"):
        RunConfig.from_params(_params(input_uri="gs://images/{ds}"), None)


def test_from_dict_checks_again():
    data = RunConfig.from_params(_params(), NOV_21).to_dict()
    data["batch_size"] = 0

    with pytest.raises(ConfigError, match="^batch_size: "):
        RunConfig.from_dict(data)


def test_constructing_directly_checks_too():
    with pytest.raises(ConfigError, match="^namespace: "):
        RunConfig(input_uri="/in", output_uri="/out", warehouse="duckdb:///w.duckdb", namespace="Bad")


def test_a_config_is_frozen():
    config = RunConfig.from_params(_params(), NOV_21)

    with pytest.raises(dataclasses.FrozenInstanceError):
        config.batch_size = 1  # type: ignore[misc]


# -- the run record ----------------------------------------------------------------------------------


def test_json_for_the_run_record_masks_credentials_and_signed_url_tokens():
    config = RunConfig.from_params(
        _params(input_uri="https://user:secret@example.com/lists/today.csv?X-Goog-Signature=abc123"), NOV_21
    )

    record = json.loads(config.to_json())

    assert "secret" not in config.to_json() and "abc123" not in config.to_json()
    assert record["input_uri"] == "https://***@example.com/lists/today.csv?***"
    assert record["batch_size"] == config.batch_size
    assert set(record) == set(FIELDS)


# -- the Param form and RunConfig agree ------------------------------------------------------------

# Fields whose only rules are their JSON schema (types, bounds, enums, patterns): for these the trigger form and
# RunConfig must give the same answer on every value. The others add checks a schema cannot state (weights
# enum members of the chosen model, '..' segments, date placeholders), listed in REJECTED with schema_too=False.
SCHEMA_ONLY = sorted(name for name in FIELDS if name not in config_module._MEANING)

JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 8, 16, 256, 1000, 1024, 4096, 1 << 34, 10_000_000]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 0.5, 1.0, 8.0, 8.5, 600.0, 600.5, float("nan"), float("inf"), -float("inf")]),
    st.text(max_size=6),
    st.sampled_from(["auto", "Auto", " auto", "8", "true", "fp16", "uri", "content", "1e3", "nan"]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
)


@settings(max_examples=400, deadline=None)
@given(name=st.sampled_from(SCHEMA_ONLY), value=JSON_VALUES)
def test_the_param_form_and_run_config_accept_the_same_values(name, value):
    """A conf the trigger form accepts starts the run, and one it refuses, RunConfig refuses too, naming the
    field; nothing else is ever raised (NaN, inf, huge numbers and wrong types included)."""
    try:
        RunConfig.from_params(_params(**{name: value}), NOV_21)
    except ConfigError as error:
        assert str(error).startswith(f"{name}: ")
        assert _schema_rejects(name, value), f"the form accepts {value!r}, the run then fails: {error}"
    else:
        assert not _schema_rejects(name, value), f"the form refuses {value!r}, which RunConfig accepts"
        assert not (isinstance(value, float) and not math.isfinite(value))


def test_the_param_patterns_are_ecma_262_too():
    """The trigger form checks patterns in the browser too, where inline flags like (?i) are syntax errors."""
    for name, f in FIELDS.items():
        assert not re.search(r"\(\?[^:=!]", f.metadata["schema"].get("pattern", "")), (
            name
        )  # (?: (?= (?! are fine


STRING_EXAMPLES = {
    **{name: value for name, value in _params().items() if isinstance(value, str)},
    "weights_sha256": "a" * 64,
    "ground_truth_uri": "/data/instances.json",
    "batch_size": "auto",
    "shard_size": "auto",
}


@pytest.mark.parametrize("control", ["\n", "\r\n", "\t", "\x00", "\x7f", "\x0b"])
@pytest.mark.parametrize("name", sorted(STRING_EXAMPLES))
def test_no_accepted_value_keeps_a_control_character(name, control):
    """Python's `$` matches before a final newline, so `default\\n` once passed the namespace pattern and reached
    a pod spec, and `auto\\n` silently turned auto shard sizing off. A value with a control character at either
    end is refused naming the field, or (URIs: surrounding whitespace) accepted without it."""
    for value in (STRING_EXAMPLES[name] + control, control + STRING_EXAMPLES[name]):
        try:
            config = RunConfig.from_params(_params(**{name: value}), NOV_21)
        except ConfigError as error:
            assert str(error).startswith(f"{name}: ")
        else:
            kept = getattr(config, name)
            assert not re.search(r"[\x00-\x1f\x7f]", kept), f"{name} kept {kept!r}"
            assert not _schema_rejects(name, value), f"the form refuses {value!r}, which RunConfig accepts"


@pytest.mark.parametrize("name", ["input_uri", "output_uri", "weights", "ground_truth_uri"])
@settings(max_examples=250, deadline=None)
@given(value=STORAGE_URIS)
def test_the_param_form_accepts_every_storage_uri_run_config_accepts(name, value):
    """The form may be looser than RunConfig (it has no '..', bucket or file-host rules) but never stricter:
    a value RunConfig accepts after normalising (whitespace, scheme case, '/.') starts the run. A value the form
    lets through and RunConfig refuses is a ConfigError naming the field, nothing else."""
    try:
        RunConfig.from_params(_params(**{name: value}), NOV_21)
    except ConfigError as error:
        assert str(error).startswith(f"{name}: ")
    else:
        assert not _schema_rejects(name, value), f"the form refuses {value!r}, which RunConfig accepts"
