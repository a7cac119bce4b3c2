from __future__ import annotations

import dataclasses
import datetime
import json
import subprocess
import sys

import pytest

from detection_pipeline.config import RunConfig
from detection_pipeline.launch.engine_args import ENGINE_OPTIONS, NOT_ENGINE_OPTIONS, engine_arguments

WEIGHTS_WITH_SPACES = "/models/my weights; $(id).pth"
HOSTILE_URI = "gs://bucket/my images; rm -rf / $(whoami) `id` 'q' \"dq\" *.jpg"


def _config(**overrides) -> RunConfig:
    values = dict(
        input_uri="/data/in",
        output_uri="/data/out",
        warehouse="duckdb:///w.duckdb",
        model="fasterrcnn_mobilenet_v3_large_320_fpn",
        weights="gs://models/detector.pth",
        weights_sha256="ab" * 32,
        batch_size=4,
        score_threshold=0.35,
        max_detections=17,
        min_size=96,
        max_size=128,
        precision="bf16",
    )
    values.update(overrides)
    return RunConfig(**values)


def _args(config: RunConfig, **overrides) -> list[str]:
    kwargs = dict(
        run_prefix="/data/out/manual__2026-11-21",
        run_id="manual__2026-11-21T00:00:00+00:00",
        run_date="2026-11-21",
        shard_index=3,
        manifest_uri="/data/out/manual__2026-11-21/shards/shard-00003.parquet",
    )
    kwargs.update(overrides)
    return engine_arguments(config, **kwargs)


def _as_dict(args: list[str]) -> dict[str, str]:
    pairs = [arg.split("=", 1) for arg in args]
    assert all(len(pair) == 2 and pair[0].startswith("--") for pair in pairs), args
    flags = [flag for flag, _ in pairs]
    assert len(flags) == len(set(flags)), f"a flag appears twice: {flags}"
    return dict(pairs)


def test_every_config_field_is_either_an_engine_option_or_explicitly_not():
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    assert not set(ENGINE_OPTIONS) & NOT_ENGINE_OPTIONS
    assert set(ENGINE_OPTIONS) | NOT_ENGINE_OPTIONS == fields, (
        "a RunConfig field is neither passed to the engine nor listed as not the engine's business: "
        f"{fields ^ (set(ENGINE_OPTIONS) | NOT_ENGINE_OPTIONS)}"
    )


def test_arguments_are_a_list_of_one_flag_with_its_value_each():
    args = _args(_config())

    assert isinstance(args, list) and all(isinstance(a, str) for a in args)
    assert _as_dict(args) == {
        "--manifest": "/data/out/manual__2026-11-21/shards/shard-00003.parquet",
        "--output-prefix": "/data/out/manual__2026-11-21",
        "--run-id": "manual__2026-11-21T00:00:00+00:00",
        "--run-date": "2026-11-21",
        "--shard-index": "3",
        "--model": "fasterrcnn_mobilenet_v3_large_320_fpn",
        "--weights": "gs://models/detector.pth",
        "--weights-sha256": "ab" * 32,
        "--batch-size": "4",
        "--score-threshold": "0.35",
        "--max-detections": "17",
        "--min-size": "96",
        "--max-size": "128",
        "--precision": "bf16",
        "--channels-last": "false",  # the fast-path switches, spelled out
        "--compile": "false",
        "--decode-on-device": "false",
        "--prefetch-to-device": "false",
        "--max-image-bytes": str(64 * 1024 * 1024),  # the read bounds, at their defaults
        "--connect-timeout-s": "10.0",
        "--read-timeout-s": "30.0",
        "--image-timeout-s": "120.0",
    }


def test_every_engine_option_of_the_config_reaches_the_engine_with_its_value():
    config = _config()
    passed = _as_dict(_args(config))
    for field, flag in ENGINE_OPTIONS.items():
        value = getattr(config, field)
        assert passed[flag] == (str(value).lower() if isinstance(value, bool) else str(value)), field


def test_unset_optional_options_are_left_to_the_engine_defaults():
    passed = _as_dict(_args(_config(weights_sha256=None, min_size=None, max_size=None)))

    assert not {"--weights-sha256", "--min-size", "--max-size"} & passed.keys()
    assert passed["--batch-size"] == "4"


def test_shell_metacharacters_and_leading_dashes_stay_one_literal_argument():
    args = _args(_config(weights=WEIGHTS_WITH_SPACES), manifest_uri=HOSTILE_URI, run_id="-odd run id")

    # A real process receives exactly these strings: nothing was split, expanded or substituted.
    echoed = subprocess.run(
        [sys.executable, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    received = json.loads(echoed.stdout)
    assert received == args
    assert f"--manifest={HOSTILE_URI}" in received
    assert "--run-id=-odd run id" in received
    assert f"--weights={WEIGHTS_WITH_SPACES}" in received


def test_a_value_that_is_not_text_or_a_number_is_refused():
    with pytest.raises(TypeError, match="--shard-index"):
        _args(_config(), shard_index=None)
    with pytest.raises(TypeError, match="--run-date"):
        _args(_config(), run_date=datetime.date(2026, 11, 21))  # the engine expects the ISO string


def test_the_engine_parses_every_argument_back_to_the_config_value():
    """The contract with the other side: the engine's own parser reads back exactly what the config says."""
    from detection_engine.cli import parse_job  # imports torch: only this test pays for it

    config = _config(weights=WEIGHTS_WITH_SPACES)

    job = parse_job(_args(config, manifest_uri=HOSTILE_URI, run_id="-odd run id"))

    assert (job.manifest, job.run_id, job.shard_index, str(job.run_date)) == (
        HOSTILE_URI,
        "-odd run id",
        3,
        "2026-11-21",
    )
    assert job.output_prefix == "/data/out/manual__2026-11-21"
    assert job.pipeline.batch_size == config.batch_size
    model = job.model
    assert (model.name, model.weights, model.weights_sha256) == (
        config.model,
        config.weights,
        config.weights_sha256,
    )
    assert (model.score_threshold, model.max_detections) == (config.score_threshold, config.max_detections)
    assert (model.min_size, model.max_size, model.precision) == (
        config.min_size,
        config.max_size,
        config.precision,
    )


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("compile", [False, True])
@pytest.mark.parametrize("data_path", [False, True])
def test_the_fast_path_switches_reach_the_engine_as_set(channels_last, compile, data_path):
    from detection_engine.cli import parse_job

    config = _config(
        channels_last=channels_last,
        compile=compile,
        decode_on_device=data_path,
        prefetch_to_device=not data_path,
    )
    job = parse_job(_args(config))

    assert (job.channels_last, job.compile) == (channels_last, compile)
    assert (job.pipeline.decode_on_device, job.pipeline.prefetch_to_device) == (data_path, not data_path)
