"""The sweep DAG: imports cleanly, fans out one awaited batch run per combination, and hands the batch DAG
only conf that the batch DAG's own Params accept."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from detection_pipeline import sweep

ROOT = Path(__file__).resolve().parents[2]
SWEEP_FILE = ROOT / "dags" / "detection_model_sweep.py"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))  # example DAGs are off in the tests' Airflow home


@pytest.fixture(scope="module")
def sweep_dag(dagbag):
    errors = {path: error for path, error in dagbag.import_errors.items() if path.endswith(SWEEP_FILE.name)}
    assert not errors, errors
    return dagbag.dags[sweep.SWEEP_DAG_ID]


def test_the_sweep_reads_plan_run_compare(sweep_dag):
    assert [t.task_id for t in sweep_dag.topological_sort()] == ["plan", "run_model", "compare"]
    assert sweep_dag.owner == "ml-platform" and sweep_dag.tags
    assert sweep_dag.get_task("compare").upstream_task_ids == {"plan", "run_model"}
    assert sweep_dag.get_task("compare").trigger_rule == "all_done"  # the table shows failed runs too


def test_one_awaited_batch_run_per_planned_combination(sweep_dag):
    from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
    from airflow.sdk.definitions._internal.expandinput import ListOfDictsExpandInput

    run_model = sweep_dag.get_task("run_model")
    assert run_model.is_mapped and run_model.operator_class is TriggerDagRunOperator
    expand = run_model.expand_input
    assert isinstance(expand, ListOfDictsExpandInput)  # expand_kwargs: one dict of kwargs per run
    assert expand.value.operator.task_id == "plan"
    kwargs = run_model.partial_kwargs
    assert kwargs["trigger_dag_id"] == "object_detection_batch"
    assert kwargs["wait_for_completion"] and kwargs["deferrable"] and kwargs["reset_dag_run"]


def test_the_triggered_conf_is_valid_for_the_batch_dag(dagbag, sweep_dag):
    batch = dagbag.dags[sweep.BATCH_DAG_ID]
    defaults = sweep_dag.params.validate()
    runs = sweep.plan_runs({**defaults, "precisions": ["fp32", "fp16"]}, "manual__2026-11-21T00:00:00+00:00")
    assert len(runs) == 2 * len(defaults["models"])
    for run in runs:
        assert run["conf"].keys() <= set(batch.params), run["conf"].keys() - set(batch.params)
        conf = copy.deepcopy(batch.params)
        conf.update(run["conf"])  # validates each value against the batch DAG's Param
        conf.validate()


def test_the_pass_through_params_are_the_batch_dags(dagbag, sweep_dag):
    batch = dagbag.dags[sweep.BATCH_DAG_ID]
    shared = set(sweep.PASS_THROUGH) & set(batch.params)
    assert {"input_uri", "output_uri", "warehouse", "weights", "batch_size"} <= shared
    for name in shared:
        mine, theirs = sweep_dag.params.get_param(name), batch.params.get_param(name)
        assert (mine.value, mine.schema) == (theirs.value, theirs.schema), name


def test_the_sweep_polls_its_runs_as_often_as_the_deployment_says(sweep_dag):
    from detection_pipeline.settings import load_settings

    settings = load_settings()
    assert sweep_dag.get_task("run_model").partial_kwargs["poke_interval"] == settings.sweep_poll_s
    for task_id in ("plan", "compare"):
        assert sweep_dag.get_task(task_id).retry_delay.total_seconds() == settings.retry_delay_s


def test_the_default_sweep_with_sizes_plans_valid_runs_for_its_fixed_size_model_too(dagbag, sweep_dag):
    batch = dagbag.dags[sweep.BATCH_DAG_ID]
    conf = {**sweep_dag.params.validate(), "min_size": 320, "max_size": 512}
    assert "ssdlite320_mobilenet_v3_large" in conf["models"]  # fixed-size
    for run in sweep.plan_runs(conf, "manual__2026-11-21T00:00:00+00:00"):
        fixed = not sweep.catalog.MODELS[run["conf"]["model"]].resizable
        assert ("min_size" in run["conf"]) is not fixed, run["conf"]
        params = copy.deepcopy(batch.params)
        params.update(run["conf"])
        params.validate()


def test_a_bad_combination_fails_plan_without_a_retry():
    from airflow.sdk.exceptions import AirflowFailException

    from detection_pipeline.errors import at_the_boundary

    bad = {"models": ["fcos_resnet50_fpn"], "precisions": ["fp32"], "min_size": 900, "max_size": 600}
    with pytest.raises(AirflowFailException, match="fcos_resnet50_fpn at fp32 cannot run: min_size"):
        at_the_boundary(sweep.plan_runs)(bad, "manual__x")
