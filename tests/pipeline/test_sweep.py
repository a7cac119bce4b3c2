"""The sweep's pure parts: its Params, the runs it triggers, and the comparison table it writes."""

from __future__ import annotations

import csv
import io
import os
import re

import fsspec
import pytest
from airflow.sdk import Param
from airflow.sdk.definitions.param import ParamsDict

from detection_engine import catalog, schema
from detection_pipeline import sweep
from detection_pipeline.sweep import SweepError, comparison_rows, plan_runs, trigger_run_id

SWEEP_RUN = "manual__2026-11-21T10:00:00+00:00"
AIRFLOW_RUN_ID = re.compile(r"^[A-Za-z0-9_.~:+-]+$")  # Airflow's default allowed_run_id_pattern


def batch_params() -> dict:
    """Params shaped like the batch DAG's: some passed through, one (shard_size) not."""
    return {
        "input_uri": Param("/data/in", type="string"),
        "output_uri": Param("/data/out", type="string"),
        "warehouse": Param("duckdb:///data/wh.duckdb", type="string"),
        "weights": Param("DEFAULT", type="string"),
        "batch_size": Param(8, type="integer", minimum=1),
        "min_size": Param(None, type=["null", "integer"]),
        "ground_truth_uri": Param(None, type=["null", "string"]),
        "shard_size": Param(1000, type="integer"),
    }


def sweep_conf(**overrides) -> dict:
    params = ParamsDict(sweep.sweep_params(batch_params()))
    params.update(overrides)
    return params.validate()


# -- Params --------------------------------------------------------------------------------------


def test_the_sweep_shares_the_batch_dags_params_for_what_it_passes_through():
    base = batch_params()
    params = sweep.sweep_params(base)
    assert set(params) == {
        "models", "precisions", "input_uri", "output_uri", "warehouse", "weights", "batch_size", "min_size",
        "ground_truth_uri", "model_sizes",
    }  # fmt: skip
    assert params["batch_size"] is not base["batch_size"]  # a copy: the sweep never alters the batch DAG's
    assert (params["batch_size"].value, params["batch_size"].schema) == (8, base["batch_size"].schema)


def test_the_default_sweep_is_valid_and_uses_catalog_models():
    conf = sweep_conf()
    assert conf["models"] == list(sweep.DEFAULT_MODELS) and conf["precisions"] == ["fp32"]
    assert set(sweep.DEFAULT_MODELS) <= set(catalog.MODELS)


@pytest.mark.parametrize(
    "overrides",
    [
        {"models": ["yolo"]},
        {"models": []},
        {"precisions": ["int8"]},
        {"batch_size": 0},
        {"model_sizes": {"ssdlite320_mobilenet_v3_large": {"min_size": 320}}},  # fixed size
        {"model_sizes": {"fcos_resnet50_fpn": {"min_size": 8}}},
        {"model_sizes": {"fcos_resnet50_fpn": {"size": 512}}},
    ],
)
def test_the_params_refuse_bad_values(overrides):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError):
        sweep_conf(**overrides)


# -- the runs it triggers ------------------------------------------------------------------------


def test_one_run_per_model_and_precision_models_outermost():
    conf = sweep_conf(models=["ssd300_vgg16", "fcos_resnet50_fpn"], precisions=["fp16", "fp32"])
    runs = plan_runs(conf, SWEEP_RUN)
    assert [(r["conf"]["model"], r["conf"]["precision"]) for r in runs] == [
        ("ssd300_vgg16", "fp16"),
        ("ssd300_vgg16", "fp32"),
        ("fcos_resnet50_fpn", "fp16"),
        ("fcos_resnet50_fpn", "fp32"),
    ]
    assert runs[0]["conf"] == {
        "input_uri": "/data/in",
        "output_uri": "/data/out",
        "warehouse": "duckdb:///data/wh.duckdb",
        "weights": "DEFAULT",
        "batch_size": 8,
        "ground_truth_uri": None,
        "model": "ssd300_vgg16",  # a fixed-size model: no min_size/max_size
        "precision": "fp16",
    }
    assert runs[2]["conf"]["min_size"] is None
    assert runs[0]["trigger_run_id"] == f"sweep__{SWEEP_RUN}__ssd300_vgg16__fp16"


def test_the_fast_path_switches_reach_every_run():
    runs = plan_runs({**sweep_conf(precisions=["fp32", "bf16"]), "compile": True}, SWEEP_RUN)

    assert runs and all(r["conf"]["compile"] is True for r in runs)
    assert all("channels_last" not in r["conf"] for r in runs)  # not given: the batch DAG's default


def test_run_ids_are_the_same_on_a_re_run_and_unique_across_sweeps_and_combinations():
    conf = sweep_conf(precisions=["fp32", "bf16"])
    first, again = plan_runs(conf, SWEEP_RUN), plan_runs(conf, SWEEP_RUN)
    other = plan_runs(conf, "manual__2026-11-22T10:00:00+00:00")
    ids = [r["trigger_run_id"] for r in first]
    assert ids == [r["trigger_run_id"] for r in again]
    assert len(set(ids)) == len(ids) == 2 * len(sweep.DEFAULT_MODELS)
    assert not set(ids) & {r["trigger_run_id"] for r in other}
    assert all(AIRFLOW_RUN_ID.match(run_id) for run_id in ids)


def test_run_ids_are_made_safe_and_bounded():
    assert trigger_run_id("manual run/1", "ssd300_vgg16", "fp32") == "sweep__manual_run_1__ssd300_vgg16__fp32"
    with pytest.raises(SweepError, match="too long"):
        trigger_run_id("x" * 240, "fasterrcnn_mobilenet_v3_large_320_fpn", "fp32")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"models": ["yolo"]}, r"unknown models \['yolo'\]"),
        ({"models": []}, "models must be a non-empty list"),
        ({"precisions": ["fp32", "fp32"]}, "precisions lists the same value twice"),
        ({"weights": "gs://bucket/model.pth"}, "is a state dict, which fits one model"),
    ],
)
def test_a_bad_sweep_triggers_nothing(overrides, message):
    with pytest.raises(SweepError, match=message):
        plan_runs({**sweep_conf(), **overrides}, SWEEP_RUN)


def test_fixed_size_models_run_at_their_own_size_and_others_take_the_sweeps_or_their_own_sizes():
    conf = sweep_conf(
        models=["fasterrcnn_resnet50_fpn", "ssdlite320_mobilenet_v3_large", "fcos_resnet50_fpn"],
        min_size=480,
        max_size=640,
        model_sizes={"fcos_resnet50_fpn": {"min_size": 320, "max_size": 512}},
    )
    sizes = {
        run["conf"]["model"]: {k: run["conf"][k] for k in ("min_size", "max_size") if k in run["conf"]}
        for run in plan_runs(conf, SWEEP_RUN)
    }
    assert sizes == {
        "fasterrcnn_resnet50_fpn": {"min_size": 480, "max_size": 640},
        "ssdlite320_mobilenet_v3_large": {},
        "fcos_resnet50_fpn": {"min_size": 320, "max_size": 512},
    }


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        # the batch DAG's RunConfig rules, per combination, before anything is triggered
        ({"min_size": 900, "max_size": 600}, "min_size: 900 is larger than max_size 600"),
        (
            {"model_sizes": {"fcos_resnet50_fpn": {"min_size": 700, "max_size": 500}}},
            "fcos_resnet50_fpn at fp32",
        ),
        ({"weights": "COCO_V2"}, r"'COCO_V2' is not a weights member"),
        ({"input_uri": "/data/in/../etc"}, r"input_uri: .*'\.\.' segment"),
        ({"output_uri": "/data/in/out"}, "output_uri: .* lies inside input_uri"),
        ({"model_sizes": {"ssd300_vgg16": {"min_size": 300}}}, "ssd300_vgg16 has a fixed input size"),
        ({"model_sizes": {"retinanet_resnet50_fpn": {"min_size": 300}}}, "not one of the sweep's models"),
    ],
)
def test_a_combination_the_batch_dag_would_refuse_fails_the_plan(overrides, message):
    models = ["fcos_resnet50_fpn", "ssd300_vgg16"]
    with pytest.raises(SweepError, match=message) as caught:
        plan_runs({**sweep_conf(models=models), **overrides}, SWEEP_RUN)
    assert "cannot run" in str(caught.value) or "model_sizes" in str(caught.value)


def test_sweep_errors_are_permanent():
    from detection_pipeline.errors import PermanentError

    assert issubclass(SweepError, PermanentError)


def test_a_state_dict_is_fine_for_a_single_model():
    runs = plan_runs(sweep_conf(models=["fcos_resnet50_fpn"], weights="/models/fcos.pth"), SWEEP_RUN)
    assert [r["conf"]["weights"] for r in runs] == ["/models/fcos.pth"]


# -- the comparison table ------------------------------------------------------------------------


def record(run_id: str, **values) -> dict:
    """A run record as the warehouse returns it: every schema.RUNS column."""
    base = dict.fromkeys(schema.column_names(schema.RUNS))
    base.update(run_id=run_id, processed=500, failed=0, precision="fp32", torch_version="2.14.1")
    base.update(values)
    return base


@pytest.fixture
def two_runs() -> list[dict]:
    return plan_runs(
        sweep_conf(models=["fasterrcnn_resnet50_fpn", "ssdlite320_mobilenet_v3_large"]), SWEEP_RUN
    )


def test_rows_come_from_the_records_in_plan_order(two_runs):
    first, second = (r["trigger_run_id"] for r in two_runs)
    records = {
        second: record(second, images_per_s=120.0, cost_per_1000_images_usd=0.01, coco_map=None),
        first: record(
            first,
            weights_id="FasterRCNN_ResNet50_FPN_Weights.COCO_V1",
            coco_map=0.361,
            coco_map50=0.58,
            eval_images=500,
            images_per_s=40.5,
            images_per_s_per_gpu=40.5,
            cost_per_1000_images_usd=0.0312,
            batch_latency_p50_ms=190.0,
            batch_latency_p95_ms=230.0,
            model_load_s=2.5,
        ),
    }
    rows = comparison_rows(two_runs, records)
    assert [row["model"] for row in rows] == ["fasterrcnn_resnet50_fpn", "ssdlite320_mobilenet_v3_large"]
    assert rows[0] == {
        "model": "fasterrcnn_resnet50_fpn",
        "weights": "FasterRCNN_ResNet50_FPN_Weights.COCO_V1",
        "precision": "fp32",
        "box_map": 0.361,
        "box_map50": 0.58,
        "published_box_map": 37.0,
        "eval_images": 500,
        "images": 500,
        "failed": 0,
        "images_per_s": 40.5,
        "images_per_s_per_gpu": 40.5,
        "cost_per_1000_images_usd": 0.0312,
        "batch_latency_p50_ms": 190.0,
        "batch_latency_p95_ms": 230.0,
        "model_load_s": 2.5,
        "device_name": None,
        "torch_version": "2.14.1",
        "torchvision_version": None,
        "cuda_version": None,
        "run_id": first,
    }
    assert rows[1]["box_map"] is None and rows[1]["published_box_map"] == 21.3


def test_a_run_without_a_record_keeps_its_row(two_runs):
    rows = comparison_rows(two_runs, {})
    assert [(r["model"], r["images"], r["run_id"]) for r in rows] == [
        (r["conf"]["model"], None, r["trigger_run_id"]) for r in two_runs
    ]


def test_a_precision_that_fell_back_is_shown():
    runs = plan_runs(sweep_conf(models=["ssd300_vgg16"], precisions=["fp16"]), SWEEP_RUN)
    rows = comparison_rows(runs, {runs[0]["trigger_run_id"]: record(runs[0]["trigger_run_id"])})
    assert rows[0]["precision"] == "fp16 (ran fp32)"


def test_random_weights_get_no_published_map():
    runs = plan_runs(sweep_conf(models=["ssd300_vgg16"], weights="none"), SWEEP_RUN)
    assert comparison_rows(runs, {})[0]["published_box_map"] is None


def test_published_maps_are_torchvisions():
    from torchvision.models import get_model_weights

    for name in catalog.MODELS:
        metrics = get_model_weights(name).COCO_V1.meta["_metrics"]["COCO-val2017"]
        assert (
            comparison_rows(plan_runs(sweep_conf(models=[name]), SWEEP_RUN), {})[0]["published_box_map"]
            == metrics["box_map"]
        ), name


def _rows(two_runs) -> list[dict]:
    first = two_runs[0]["trigger_run_id"]
    return comparison_rows(
        two_runs, {first: record(first, coco_map=0.3614, images_per_s=40.55, device_name="a|b")}
    )


def test_csv_holds_the_raw_values(two_runs):
    rows = _rows(two_runs)
    parsed = list(csv.DictReader(io.StringIO(sweep.to_csv(rows))))
    assert list(parsed[0]) == [c.key for c in sweep.COLUMNS]
    assert (parsed[0]["box_map"], parsed[0]["images_per_s"], parsed[1]["images"]) == ("0.3614", "40.55", "")


def _markdown_cells(line: str) -> list[str]:
    """A Markdown table line's cells, split at the pipes that are not escaped."""
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]


def test_markdown_is_one_table_with_readable_numbers(two_runs):
    text = sweep.to_markdown(_rows(two_runs), "Model sweep x")
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 2  # header, rule, one line per run
    assert _markdown_cells(table[0]) == [c.header for c in sweep.COLUMNS]
    cells = _markdown_cells(table[2])
    assert cells[:6] == ["fasterrcnn_resnet50_fpn", "DEFAULT", "fp32", "36.1", "", "37.0"]
    assert cells[sweep.COLUMNS.index(next(c for c in sweep.COLUMNS if c.key == "device_name"))] == "a\\|b"
    assert [len(_markdown_cells(line)) for line in table] == [len(sweep.COLUMNS)] * 4  # no cell split


def test_html_escapes_values(two_runs):
    rows = _rows(two_runs)
    rows[0]["device_name"] = "<script>"
    page = sweep.to_html(rows, "Model sweep <x>")
    assert (
        "<script>" not in page and "&lt;script&gt;" in page and "<title>Model sweep &lt;x&gt;</title>" in page
    )
    assert page.count("<tr") == 3  # header and one row per run
    assert "<th>box mAP</th>" in page and "<td>36.1</td>" in page


def test_the_table_is_written_in_three_formats(tmp_path, two_runs):
    prefix = sweep.sweep_prefix(str(tmp_path / "out"), SWEEP_RUN)
    uris = sweep.write_comparison(_rows(two_runs), prefix, "t")
    assert prefix == str(tmp_path / "out" / "sweeps" / "manual__2026-11-21T10_00_00+00_00")
    assert uris == {
        k: f"{prefix}/comparison.{ext}" for k, ext in (("markdown", "md"), ("csv", "csv"), ("html", "html"))
    }
    assert (tmp_path / "out/sweeps/manual__2026-11-21T10_00_00+00_00/comparison.csv").read_text().count(
        "\n"
    ) == 3


def test_a_failed_rewrite_keeps_the_previous_table_whole(tmp_path, two_runs, monkeypatch):
    prefix = sweep.sweep_prefix(str(tmp_path / "out"), SWEEP_RUN)
    uris = sweep.write_comparison(_rows(two_runs), prefix, "t")
    before = {kind: open(uri, encoding="utf-8").read() for kind, uri in uris.items()}

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("detection_engine.storage.os.replace", refuse)
    with pytest.raises(OSError, match="No space left on device"):
        sweep.write_comparison(_rows(two_runs)[:1], prefix, "t")

    assert {kind: open(uri, encoding="utf-8").read() for kind, uri in uris.items()} == before
    assert sorted(os.listdir(prefix)) == ["comparison.csv", "comparison.html", "comparison.md"]


def test_the_table_is_written_to_gcs(gcs_bucket, two_runs):
    uris = sweep.write_comparison(_rows(two_runs), sweep.sweep_prefix(f"{gcs_bucket}/out", SWEEP_RUN), "t")
    with fsspec.open(uris["markdown"], "r") as fh:
        assert "| fasterrcnn_resnet50_fpn " in fh.read()


# -- from the warehouse ----------------------------------------------------------------------------

_SAMPLE = {"STRING": "x", "INT64": 0, "FLOAT64": 0.0, "BOOL": False, "DATE": "2026-11-21"}


def full_record(run_id: str, **values) -> dict:
    """A record the warehouse accepts: every REQUIRED runs column filled with a sample of its type."""
    base = {
        f.name: _SAMPLE.get(f.type, "2026-11-21T00:00:00+00:00") if f.mode == "REQUIRED" else None
        for f in schema.RUNS
    }
    return {**base, "run_id": run_id, **values}


def read_csv(uri: str) -> list[dict]:
    with fsspec.open(uri, "r") as fh:
        return list(csv.DictReader(fh))


def test_compare_reads_the_records_from_a_real_warehouse_and_names_runs_without_one(tmp_path, two_runs):
    from detection_pipeline.warehouse import open_warehouse

    warehouse = open_warehouse(f"duckdb://{tmp_path}/wh.duckdb")
    warehouse.ensure_tables()
    first, second = (r["trigger_run_id"] for r in two_runs)
    warehouse.write_run_record(full_record(first, processed=64, coco_map=0.25, images_per_s=12.5))
    prefix = sweep.sweep_prefix(str(tmp_path / "out"), SWEEP_RUN)

    with pytest.raises(SweepError, match=f"1 of 2 runs left no run record: {re.escape(second)}"):
        sweep.compare_runs(warehouse, two_runs, prefix, "t")
    written = read_csv(f"{prefix}/comparison.csv")  # the table is written all the same
    assert [(r["images"], r["box_map"], r["images_per_s"]) for r in written] == [
        ("64", "0.25", "12.5"),
        ("", "", ""),
    ]

    warehouse.write_run_record(full_record(second, processed=64))
    uris = sweep.compare_runs(warehouse, two_runs, prefix, "t")
    assert [r["images"] for r in read_csv(uris["csv"])] == ["64", "64"]
