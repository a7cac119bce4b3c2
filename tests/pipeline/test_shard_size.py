"""`shard_size: auto`: ten minutes per pod from the images/s per GPU that comparable earlier runs recorded."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from detection_engine.catalog import weights_id
from detection_pipeline import sharding
from detection_pipeline.config import ConfigError, RunConfig
from detection_pipeline.shard_size import (
    DEFAULT_SHARD_SIZE,
    HISTORY,
    MAX_SHARD_SIZE,
    TARGET_POD_S,
    auto_shard_size,
    measured_rate,
    resolve,
)


def _config(**overrides) -> RunConfig:
    values = {
        "input_uri": "gs://images/in/",
        "output_uri": "gs://images/out",
        "warehouse": "duckdb:///tmp/w.duckdb",
        "shard_size": "auto",
        "machine_type": "g2-standard-8",
        "gpu_type": "nvidia-l4",
        "gpu_count": 1,
    }
    return RunConfig(**(values | overrides))


def _record(rate, **overrides) -> dict:
    return {
        "model_name": "fasterrcnn_resnet50_fpn",
        "weights_id": weights_id("fasterrcnn_resnet50_fpn", "DEFAULT", None),
        "precision": "fp32",
        "machine_type": "g2-standard-8",
        "gpu_type": "nvidia-l4",
        "gpu_count": 1,
        "images_per_s_per_gpu": rate,
    } | overrides


def test_auto_sizes_a_shard_for_ten_minutes_at_the_measured_speed():
    records = [_record(20.0), _record(30.0), _record(25.0)]
    config = resolve(_config(), records)
    assert config.shard_size == round(25.0 * TARGET_POD_S) == 15_000
    assert resolve(_config(gpu_count=2, machine_type="g2-standard-24"), [_record(25.0, gpu_count=2,
                   machine_type="g2-standard-24")]).shard_size == 30_000  # fmt: skip


def test_only_runs_of_the_same_model_weights_precision_and_hardware_count():
    others = [
        _record(99.0, model_name="retinanet_resnet50_fpn"),
        _record(99.0, weights_id="COCO_V1:other"),
        _record(99.0, precision="fp16"),
        _record(99.0, machine_type="a2-highgpu-1g"),
        _record(99.0, gpu_type="nvidia-tesla-t4"),
        _record(99.0, gpu_count=2),
        _record(None),  # a CPU run records no rate per GPU
        _record(99.0, fast_paths=COMPILED),
        _record(99.0, fast_paths=f"{COMPILED} | {NOTHING}"),  # a mixed run predicts neither
    ]
    assert measured_rate(others, _config()) is None
    assert resolve(_config(), others).shard_size == DEFAULT_SHARD_SIZE
    assert measured_rate([*others, _record(10.0)], _config()) == 10.0


COMPILED = '{"channels_last": false, "compile": "on"}'
NOTHING = '{"channels_last": false, "compile": "off"}'


def test_runs_count_for_the_fast_paths_they_asked_for_even_where_compiling_fell_back():
    fell_back = '{"channels_last": false, "compile": "eager fallback: InductorError: no compiler"}'
    records = [_record(10.0), _record(11.0, fast_paths=NOTHING), _record(40.0, fast_paths=COMPILED)]
    records.append(_record(42.0, fast_paths=fell_back))

    assert measured_rate(records, _config()) == 10.5  # none recorded (older runs) or "off": the same
    assert measured_rate(records, _config(compile=True)) == 41.0
    assert measured_rate(records, _config(channels_last=True)) is None


def test_runs_from_before_a_switch_existed_count_as_without_it():
    on_device = '{"channels_last": false, "compile": "off", "decode_on_device": true}'
    records = [_record(10.0, fast_paths=NOTHING), _record(30.0, fast_paths=on_device)]

    assert measured_rate(records, _config()) == 10.0
    assert measured_rate(records, _config(decode_on_device=True)) == 30.0
    assert measured_rate(records, _config(decode_on_device=True, prefetch_to_device=True)) is None


def test_only_the_latest_runs_count():
    old = [_record(1.0)] * 50
    assert measured_rate([*old, *[_record(40.0)] * HISTORY], _config()) == 40.0


def test_a_fixed_shard_size_is_kept():
    assert resolve(_config(shard_size=123), [_record(50.0)]).shard_size == 123


def test_unresolved_auto_shards_at_the_default_size_and_max_shards_still_caps():
    assert sharding.shard_count(10 * DEFAULT_SHARD_SIZE, _config()) == 10
    assert sharding.shard_count(10**6, _config(max_shards=7)) == 7


@pytest.mark.parametrize("value", ["big", "AUTO", 0, -5, 10_000_001])
def test_shard_size_is_auto_or_a_positive_integer(value):
    with pytest.raises(ConfigError, match="shard_size"):
        _config(shard_size=value)


@given(rate=st.floats(min_value=1e-6, max_value=1e6), more=st.floats(min_value=0, max_value=1e6),
       gpus=st.integers(1, 8))  # fmt: skip
def test_the_size_is_bounded_and_grows_with_speed(rate, more, gpus):
    size = auto_shard_size(rate, gpus)
    assert 1 <= size <= MAX_SHARD_SIZE
    assert auto_shard_size(rate + more, gpus) >= size
