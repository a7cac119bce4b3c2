"""The run record from real shard metrics files, written to a real DuckDB warehouse."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from detection_engine import layout, schema
from detection_pipeline.aggregate import ShardMetricsError, build_run_record, busy_seconds, read_shard_metrics
from detection_pipeline.config import RunConfig
from detection_pipeline.pricing import load_prices
from detection_pipeline.versions import pipeline_versions
from detection_pipeline.warehouse import open_warehouse
from tests.pipeline.shard_files import T0, shard_metrics, write_metrics

RUN = "manual__2026-11-21T10:00:00+00:00"
MANIFEST = {"listed": 130, "duplicates": 20, "skipped_not_image": 5, "skipped_incremental": 0, "unique": 105}
RECORDED = datetime(2026, 11, 21, 12, tzinfo=UTC)


def _config(tmp_path, **overrides) -> RunConfig:
    return RunConfig(
        input_uri="gs://images/in",
        output_uri=str(tmp_path / "out"),
        warehouse=f"duckdb://{tmp_path}/w.duckdb",
        **overrides,
    )


def _record(config, metrics, specs=None, **overrides) -> dict:
    specs = specs if specs is not None else [{"shard_index": m["shard_index"]} for m in metrics]
    kwargs = {
        "run_id": RUN,
        "run_date": "2026-11-21",
        "logical_date": "2026-11-21T10:00:00+00:00",
        "run_type": "manual",
        "manifest_stats": MANIFEST,
        "shard_specs": specs,
        "metrics": metrics,
        "started_at": "2026-11-21T09:59:00+00:00",
        "recorded_at": RECORDED,
    } | overrides
    return build_run_record(config, **kwargs)


# -- reading the shards' metrics -----------------------------------------------------------------


def _write_shards(prefix: str, sizes: dict[int, int]) -> list[dict]:
    written = []
    for index, images in sizes.items():
        metrics = shard_metrics(RUN, index, images=images, failed=1, start_offset_s=index)
        write_metrics(layout.shard_metrics_uri(prefix, index), metrics)
        written.append(metrics)
    return written


def test_read_shard_metrics_returns_every_planned_shard_in_order(tmp_path):
    prefix = layout.run_prefix(str(tmp_path), RUN)
    written = _write_shards(prefix, {2: 10, 0: 30, 1: 20})
    assert read_shard_metrics(prefix, [1, 2, 0, 1]) == sorted(written, key=lambda m: m["shard_index"])
    assert read_shard_metrics(prefix, [2]) == [written[0]]
    assert read_shard_metrics(prefix, []) == []


def test_read_shard_metrics_names_the_missing_shards(tmp_path):
    prefix = layout.run_prefix(str(tmp_path), RUN)
    _write_shards(prefix, {0: 5, 2: 5})
    with pytest.raises(ShardMetricsError) as info:
        read_shard_metrics(prefix, range(5))
    message = str(info.value)
    assert message.startswith("metrics missing for 3 of 5 shards: [1, 3, 4]")
    assert layout.shard_metrics_uri(prefix, 1) in message


def test_read_shard_metrics_lists_every_malformed_file(tmp_path):
    prefix = layout.run_prefix(str(tmp_path), RUN)
    _write_shards(prefix, {0: 5, 1: 5, 2: 5, 3: 5, 4: 5})
    with open(layout.shard_metrics_uri(prefix, 1), "w") as f:
        f.write("{not json")
    extra = shard_metrics(RUN, 2, images=5) | {"gpu_temp_c": 70}
    del extra["infer_s"]
    write_metrics(layout.shard_metrics_uri(prefix, 2), extra)
    write_metrics(layout.shard_metrics_uri(prefix, 3), shard_metrics(RUN, 7, images=5))
    write_metrics(layout.shard_metrics_uri(prefix, 4), [1, 2])
    with pytest.raises(ShardMetricsError) as info:
        read_shard_metrics(prefix, range(5))
    message = str(info.value)
    assert "shard 1: " in message and "is not JSON" in message
    assert "shard 2: " in message and "lacks keys ['infer_s'], has unexpected keys ['gpu_temp_c']" in message
    assert "shard 3: " in message and "says shard_index 7" in message
    assert "shard 4: " in message and "holds list, not an object" in message
    assert "shard 0" not in message


def test_read_shard_metrics_from_gcs(gcs_bucket):
    prefix = layout.run_prefix(f"{gcs_bucket}/out", RUN)
    written = _write_shards(prefix, {0: 3, 1: 4})
    assert read_shard_metrics(prefix, [0, 1]) == written
    with pytest.raises(ShardMetricsError, match=re.escape("metrics missing for 1 of 3 shards: [2]")):
        read_shard_metrics(prefix, [0, 1, 2])


# -- the record ----------------------------------------------------------------------------------


def _two_gpu_shards() -> list[dict]:
    return [
        shard_metrics(RUN, 0, images=60, failed=2, start_offset_s=0, wall_s=100.0, batches=8,
                      batch_latency_p50_ms=200.0, batch_latency_p95_ms=300.0, infer_s=70.0, model_load_s=4.0),
        shard_metrics(RUN, 1, images=45, failed=1, start_offset_s=20, wall_s=120.0, batches=2,
                      batch_latency_p50_ms=400.0, batch_latency_p95_ms=800.0, infer_s=90.0, model_load_s=6.0),
    ]  # fmt: skip


def test_the_record_keeps_the_batch_size_the_shards_ran_at(tmp_path):
    two = _two_gpu_shards()
    assert _record(_config(tmp_path), two)["batch_size"] == 8  # auto: the shards' resolved size
    assert _record(_config(tmp_path, batch_size=4), two)["batch_size"] == 4
    mixed = [two[0], {**two[1], "batch_size": 16}]
    assert _record(_config(tmp_path), mixed)["batch_size"] is None  # auto resolved differently per shard


def test_the_record_adds_up_the_shards(tmp_path):
    config = _config(tmp_path)
    record = _record(config, _two_gpu_shards())

    assert list(record) == schema.column_names(schema.RUNS)
    json.dumps(record)  # XCom-ready
    assert {k: record[k] for k in ("listed", "duplicates", "skipped_not_image", "skipped_incremental")} == {
        "listed": 130, "duplicates": 20, "skipped_not_image": 5, "skipped_incremental": 0,
    }  # fmt: skip
    assert (record["processed"], record["ok"], record["failed"], record["shards"]) == (105, 102, 3, 2)
    assert record["wall_s"] == 140.0  # shard 0 starts at 0 s, shard 1 ends at 20 + 120 s
    assert record["started_at"] == "2026-11-21T09:59:00+00:00"
    assert record["finished_at"] == "2026-11-21T10:02:20+00:00"
    assert record["shard_wall_s"] == 220.0
    assert record["inference_s"] == 160.0
    assert record["model_load_s"] == 5.0
    assert record["images_per_s"] == pytest.approx(105 / 140)
    assert record["images_per_s_per_gpu"] == pytest.approx(105 / 220)
    assert record["batch_latency_p50_ms"] == pytest.approx((200 * 8 + 400 * 2) / 10)
    assert record["batch_latency_p95_ms"] == pytest.approx((300 * 8 + 800 * 2) / 10)

    price = load_prices().machines["g2-standard-8"]["usd_per_hour"]
    assert (record["machine_type"], record["gpu_type"], record["gpu_count"]) == (
        "g2-standard-8",
        "nvidia-l4",
        1,
    )
    assert record["machine_hours"] == pytest.approx(220 / 3600)
    assert record["gpu_hours"] == pytest.approx(220 / 3600)
    assert record["estimated_cost_usd"] == pytest.approx(220 / 3600 * price)
    assert record["cost_per_1000_images_usd"] == pytest.approx(220 / 3600 * price / 105 * 1000)

    versions = pipeline_versions()
    for key in (
        "airflow_version",
        "google_provider_version",
        "kubernetes_provider_version",
        "project_version",
    ):
        assert record[key] == versions[key] and record[key]
    assert (record["torch_version"], record["torchvision_version"], record["cuda_version"]) == (
        "2.14.1",
        "0.29.1",
        "12.8",
    )
    assert record["python_version"] == "3.11.9"  # the engine's, which ran the model
    assert (record["container_image"], record["device_name"]) == ("detection-engine:test", "NVIDIA L4")
    assert (record["model_name"], record["weights_id"], record["random_weights"]) == (
        "fasterrcnn_resnet50_fpn", "COCO_V1", False,
    )  # fmt: skip
    assert (record["precision"], record["batch_size"]) == ("fp32", 8)
    assert json.loads(record["config_json"]) == config.to_dict()
    assert (record["run_date"], record["logical_date"]) == ("2026-11-21", "2026-11-21T10:00:00+00:00")
    assert record["recorded_at"] == RECORDED.isoformat()
    assert record["coco_map"] is None and record["ground_truth_uri"] is None


# -- run figures from what ran: wall time is the time a shard was running ------------------------------


def test_overlapping_shards_count_their_common_time_once(tmp_path):
    metrics = [
        shard_metrics(RUN, 0, images=60, start_offset_s=0, wall_s=100.0),
        shard_metrics(RUN, 1, images=30, start_offset_s=20, wall_s=30.0),  # inside shard 0's time
        shard_metrics(RUN, 2, images=15, start_offset_s=90, wall_s=40.0),  # overlaps shard 0's end
    ]
    record = _record(_config(tmp_path), metrics)
    assert record["wall_s"] == 130.0
    assert record["images_per_s"] == pytest.approx(105 / 130)
    assert record["shard_wall_s"] == 170.0


def test_a_shard_re_run_far_later_adds_only_its_own_duration(tmp_path):
    """A cleared shard re-run ten minutes after the run: the wait is in no figure, its new duration is."""
    config = _config(tmp_path)
    together = _record(config, _two_gpu_shards())
    metrics = _two_gpu_shards()
    metrics[0] = shard_metrics(RUN, 0, images=60, failed=2, start_offset_s=740, wall_s=100.0, batches=8,
                               batch_latency_p50_ms=200.0, batch_latency_p95_ms=300.0, infer_s=70.0,
                               model_load_s=4.0)  # fmt: skip
    rerun = _record(config, metrics)

    assert rerun["wall_s"] == 220.0  # shard 1: 20..140 s, shard 0 again: 740..840 s
    assert rerun["wall_s"] <= together["wall_s"] + 100.0
    assert rerun["images_per_s"] == pytest.approx(105 / 220)
    assert rerun["finished_at"] == (T0 + timedelta(seconds=840)).isoformat()
    for key in ("shard_wall_s", "machine_hours", "gpu_hours", "estimated_cost_usd", "images_per_s_per_gpu",
                "cost_per_1000_images_usd", "processed", "ok", "failed"):  # fmt: skip
        assert rerun[key] == together[key], key


def test_a_single_shard_s_wall_time_is_its_own(tmp_path):
    record = _record(_config(tmp_path), [shard_metrics(RUN, 0, images=105, start_offset_s=7, wall_s=42.5)])
    assert record["wall_s"] == 42.5 == record["shard_wall_s"]
    assert record["images_per_s"] == pytest.approx(105 / 42.5)


_SPANS = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 600)), max_size=12)


def _intervals(spans: list[tuple[int, int]]) -> list[tuple[datetime, datetime]]:
    return [(T0 + timedelta(seconds=s), T0 + timedelta(seconds=s + length)) for s, length in spans]


@given(spans=_SPANS, data=st.data())
def test_busy_seconds_is_the_length_of_the_union(spans, data):
    busy = busy_seconds(_intervals(spans))
    covered = set().union(*(range(s, s + length) for s, length in spans))  # whole seconds covered
    assert busy == len(covered)
    assert busy_seconds(_intervals(data.draw(st.permutations(spans)))) == busy
    if spans:
        lengths = [length for _, length in spans]
        span = max(s + length for s, length in spans) - min(s for s, _ in spans)
        assert max(lengths) <= busy <= min(span, sum(lengths))


@given(spans=_SPANS, later=st.integers(1, 600), gap=st.integers(1, 100_000))
def test_a_shard_after_a_gap_adds_exactly_its_length(spans, later, gap):
    end = max((s + length for s, length in spans), default=0)
    moved = _intervals([*spans, (end + gap, later)])
    assert busy_seconds(moved) == busy_seconds(_intervals(spans)) + later


def test_an_interval_ending_before_it_starts_counts_nothing():
    assert busy_seconds([(T0, T0 - timedelta(seconds=5))]) == 0.0
    assert busy_seconds([]) == 0.0


def test_the_record_is_what_the_warehouse_stores(tmp_path):
    config = _config(tmp_path)
    record = _record(config, _two_gpu_shards())
    warehouse = open_warehouse(config.warehouse)
    warehouse.ensure_tables()
    warehouse.write_run_record(record)
    stored = warehouse.run_record(RUN)
    assert stored["processed"] == 105
    assert stored["finished_at"] == datetime(2026, 11, 21, 10, 2, 20, tzinfo=UTC)
    assert stored["estimated_cost_usd"] == pytest.approx(record["estimated_cost_usd"])


def test_shards_that_disagree_are_recorded_as_such(tmp_path):
    metrics = _two_gpu_shards()
    metrics[1] |= {"torch_version": "2.15.0", "device_name": "NVIDIA A100", "random_weights": True}
    record = _record(_config(tmp_path), metrics)
    assert record["torch_version"] == "2.14.1 | 2.15.0"
    assert record["device_name"] == "NVIDIA A100 | NVIDIA L4"
    assert record["random_weights"] is True


def test_cpu_shards_have_no_per_gpu_throughput_and_local_costs_its_machine_price(tmp_path):
    metrics = [m | {"device": "cpu", "device_name": None, "cuda_version": None} for m in _two_gpu_shards()]
    record = _record(_config(tmp_path, machine_type="local"), metrics)
    assert record["images_per_s_per_gpu"] is None
    assert record["images_per_s"] == pytest.approx(105 / 140)
    local = load_prices().machines["local"]["usd_per_hour"]
    assert local > 0 and record["estimated_cost_usd"] == pytest.approx(record["shard_wall_s"] / 3600 * local)
    assert record["cost_per_1000_images_usd"] == pytest.approx(record["estimated_cost_usd"] / 105 * 1000)
    assert record["cuda_version"] is None
    assert (record["gpu_type"], record["gpu_count"], record["gpu_hours"]) == (None, 0, 0.0), "no GPU ran"


def test_cpu_shards_are_not_billed_for_the_gpus_the_config_asked_for(tmp_path):
    metrics = [m | {"device": "cpu"} for m in _two_gpu_shards()]
    on_cpu = _record(_config(tmp_path, machine_type="n1-standard-8", gpu_type="nvidia-tesla-t4"), metrics)
    on_gpu = _record(
        _config(tmp_path, machine_type="n1-standard-8", gpu_type="nvidia-tesla-t4"), _two_gpu_shards()
    )
    assert on_cpu["gpu_hours"] == 0.0 and on_gpu["gpu_hours"] > 0
    assert 0 < on_cpu["estimated_cost_usd"] < on_gpu["estimated_cost_usd"]


def test_an_unpriced_machine_gives_a_null_cost_not_a_failure(tmp_path):
    record = _record(_config(tmp_path, machine_type="z9-mega-1"), _two_gpu_shards())
    assert record["estimated_cost_usd"] is None and record["cost_per_1000_images_usd"] is None
    assert record["machine_hours"] == pytest.approx(220 / 3600)


def test_an_empty_run_gives_a_valid_record_of_zeros_and_nulls(tmp_path):
    config = _config(tmp_path, weights="none")
    record = _record(config, [], specs=[], manifest_stats=MANIFEST | {"listed": 0, "duplicates": 0})
    assert (record["processed"], record["ok"], record["failed"], record["shards"]) == (0, 0, 0, 0)
    assert (record["shard_wall_s"], record["inference_s"], record["machine_hours"]) == (0.0, 0.0, 0.0)
    for key in ("wall_s", "model_load_s", "images_per_s", "images_per_s_per_gpu", "batch_latency_p50_ms",
                "cost_per_1000_images_usd", "finished_at", "torch_version", "device_name"):  # fmt: skip
        assert record[key] is None, key
    assert record["estimated_cost_usd"] == 0.0
    assert (record["model_name"], record["weights_id"], record["random_weights"]) == (
        config.model, "none", True,
    )  # fmt: skip
    assert record["container_image"] is None, "no shard ran, so no container image ran"
    warehouse = open_warehouse(config.warehouse)
    warehouse.ensure_tables()
    warehouse.write_run_record(record)
    assert warehouse.run_record(RUN)["processed"] == 0


def test_metrics_must_match_the_planned_shards(tmp_path):
    metrics = _two_gpu_shards()
    with pytest.raises(
        ShardMetricsError, match=r"metrics of shards \[0, 1\] do not match the planned shards \[0, 1, 2\]"
    ):
        _record(_config(tmp_path), metrics, specs=[{"shard_index": i} for i in range(3)])
    with pytest.raises(ValueError, match=r"manifest stats lack \['skipped_incremental'\]"):
        _record(
            _config(tmp_path),
            metrics,
            manifest_stats={k: 0 for k in ("listed", "duplicates", "skipped_not_image")},
        )


def test_accuracy_fills_only_the_evaluation_columns(tmp_path):
    accuracy = {"ground_truth_uri": "gs://gt/instances.json", "eval_images": 100, "coco_map": 0.37}
    record = _record(_config(tmp_path), _two_gpu_shards(), accuracy=accuracy)
    assert {k: record[k] for k in accuracy} == accuracy
    assert record["coco_map50"] is None
    with pytest.raises(ValueError, match=r"accuracy may only fill .* not \['processed'\]"):
        _record(_config(tmp_path), _two_gpu_shards(), accuracy={"processed": 1})


def test_preempted_attempts_are_counted_and_their_pod_time_is_in_the_cost(tmp_path):
    config = _config(tmp_path, machine_type="g2-standard-8", gpu_type="nvidia-l4")
    clean = _record(config, _two_gpu_shards())
    resumed = [
        {**_two_gpu_shards()[0], "attempt": 3, "preemptions": 2, "resumed_images": 40, "earlier_attempts_s": 250.0},
        _two_gpu_shards()[1],
    ]  # fmt: skip
    record = _record(config, resumed)

    assert (record["preemptions"], record["resumed_images"], record["redone_s"]) == (2, 40, 250.0)
    assert (clean["preemptions"], clean["resumed_images"], clean["redone_s"]) == (0, 0, 0.0)
    price = load_prices().machines["g2-standard-8"]["usd_per_hour"]
    assert record["machine_hours"] == pytest.approx((100 + 120 + 250) / 3600)
    assert record["estimated_cost_usd"] - clean["estimated_cost_usd"] == pytest.approx(250 / 3600 * price)
    assert record["images_per_s_per_gpu"] == pytest.approx(105 / (100 + 120 + 250))
    assert record["spot"] is False


def test_a_spot_run_is_priced_at_the_spot_rates(tmp_path):
    prices = load_prices()
    on_demand = _record(_config(tmp_path, machine_type="g2-standard-8"), _two_gpu_shards())
    spot = _record(_config(tmp_path, machine_type="g2-standard-8", spot=True), _two_gpu_shards())

    assert spot["spot"] is True
    ratio = prices.spot_machines["g2-standard-8"] / prices.machines["g2-standard-8"]["usd_per_hour"]
    assert spot["estimated_cost_usd"] == pytest.approx(on_demand["estimated_cost_usd"] * ratio)
    assert spot["estimated_cost_usd"] < on_demand["estimated_cost_usd"]


def test_the_record_says_which_fast_paths_ran_and_a_mixed_run_shows_each(tmp_path):
    compiled = json.dumps({"channels_last": True, "compile": "on"})
    fell_back = json.dumps({"channels_last": True, "compile": "eager fallback: InductorError: no compiler"})
    shards = _two_gpu_shards()

    same = _record(_config(tmp_path), [{**m, "fast_paths": compiled} for m in shards])
    mixed = _record(
        _config(tmp_path), [{**shards[0], "fast_paths": compiled}, {**shards[1], "fast_paths": fell_back}]
    )
    older = _record(_config(tmp_path), [{k: v for k, v in m.items() if k != "fast_paths"} for m in shards])

    assert same["fast_paths"] == compiled
    assert mixed["fast_paths"].split(" | ") == sorted([compiled, fell_back])
    assert older["fast_paths"] is None  # metrics written before the column: nothing claimed
