"""The embedded default's `detect`: the real engine, run as a subprocess by the same mapped task as the pod."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from airflow.sdk import DAG
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from PIL import Image

from detection_engine import layout
from detection_pipeline.config import RunConfig
from detection_pipeline.launch import MAP_INDEX_TEMPLATE, RETRIES, detect_task
from detection_pipeline.launch.local import LocalShardOperator
from detection_pipeline.launch.shard_kwargs import IMAGE_ENV, detect_shard_kwargs
from detection_pipeline.settings import load_settings

RUN_ID = "manual__2026-11-21T08:00:00+00:00"
RUN_DATE = "2026-11-21"
SUMMARY_KEYS = {
    "run_id",
    "shard_index",
    "images",
    "ok",
    "failed",
    "results_uri",
    "metrics_uri",
    "wall_s",
    "images_per_s",
}


def _settings(**overrides):
    return dataclasses.replace(load_settings(), **{"launcher": "local", "max_active_pods": 2, **overrides})


@pytest.fixture
def shard(tmp_path: Path) -> dict:
    """A run prefix with a Parquet manifest for shard 0: three tiny images and one corrupt file."""
    images = tmp_path / "images"
    images.mkdir()
    uris = []
    for i, (size, colour) in enumerate([((64, 48), "red"), ((48, 64), "green"), ((72, 54), "blue")]):
        path = images / f"image {i}; $(id).png"  # shell metacharacters in a path must not matter
        Image.new("RGB", size, colour).save(path)
        uris.append(str(path))
    corrupt = images / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    uris.append(str(corrupt))
    run_prefix = layout.run_prefix(str(tmp_path / "out"), RUN_ID)
    manifest = layout.shard_manifest_uri(run_prefix, 0)
    Path(manifest).parent.mkdir(parents=True)
    pq.write_table(pa.table({"image_uri": uris}), manifest)
    config = RunConfig(
        input_uri=str(images),
        output_uri=str(tmp_path / "out"),
        warehouse=f"duckdb:///{tmp_path / 'w.duckdb'}",
        model="fasterrcnn_mobilenet_v3_large_320_fpn",
        weights="none",  # pretrained weights cannot be downloaded here; seeded random init
        batch_size=2,
        min_size=64,
        max_size=96,
    )
    return {
        "config": config,
        "run_prefix": run_prefix,
        "manifest": manifest,
        "uris": uris,
        "corrupt": str(corrupt),
    }


def _operator(shard: dict, settings=None, **config_overrides) -> tuple[DAG, LocalShardOperator]:
    settings = settings or _settings()
    config = dataclasses.replace(shard["config"], **config_overrides)
    kwargs = detect_shard_kwargs(
        config.to_dict(),
        {"shard_index": 0, "images": len(shard["uris"]), "manifest_uri": shard["manifest"]},
        run_id=RUN_ID,
        run_date=RUN_DATE,
        run_prefix=shard["run_prefix"],
        deployment=settings.for_tasks(),
    )
    with DAG("detect_local_test", schedule=None) as dag:
        mapped = detect_task(settings).expand_kwargs([kwargs])
    operator = mapped.unmap(kwargs)  # what a worker runs for map index 0
    assert isinstance(operator, LocalShardOperator)
    return dag, operator


def test_local_detect_runs_the_engine_streams_its_log_and_returns_the_pod_summary(shard, capfd, caplog):
    _, operator = _operator(shard)

    summary = operator.execute(context={})

    prefix = shard["run_prefix"]
    assert set(summary) == SUMMARY_KEYS
    assert summary["run_id"] == RUN_ID and summary["shard_index"] == 0
    assert (summary["images"], summary["ok"], summary["failed"]) == (4, 3, 1)
    assert summary["results_uri"] == layout.shard_results_uri(prefix, 0)
    assert summary["metrics_uri"] == layout.shard_metrics_uri(prefix, 0)
    results = pq.read_table(summary["results_uri"]).to_pylist()
    assert sorted(row["image_uri"] for row in results) == sorted(shard["uris"])
    status = {row["image_uri"]: row["status"] for row in results}
    assert status.pop(shard["corrupt"]) == "error"
    assert set(status.values()) == {"ok"}
    assert all(row["random_weights"] and row["model_name"] == shard["config"].model for row in results)
    metrics = json.loads(Path(summary["metrics_uri"]).read_text())
    assert metrics["images"] == 4
    assert metrics["container_image"] is None  # no container ran it: the configured image is not claimed
    logged = caplog.text + capfd.readouterr().out
    assert "shard 0: 4 images from" in logged  # the engine's own log lines, relayed into the task log
    assert "(3 ok, 1 failed)" in logged


def test_a_bad_argument_fails_the_task_with_the_engine_message_and_no_retry(shard):
    _, operator = _operator(shard)
    # RunConfig refuses batch_size=0 already; the engine must refuse it too when handed one regardless.
    operator.arguments = [
        "--batch-size=0" if a.startswith("--batch-size=") else a for a in operator.arguments
    ]

    with pytest.raises(AirflowFailException) as failure:
        operator.execute(context={})

    assert str(failure.value) == (
        "detection engine exited with code 2: detection_engine: error: "
        "argument --batch-size: must be 'auto' or an integer >= 1, got 0"
    )
    assert not Path(layout.shard_results_uri(shard["run_prefix"], 0)).exists()


def test_unwritable_output_fails_the_task_so_that_it_is_retried(shard, tmp_path):
    blocker = tmp_path / "a-file-not-a-directory"
    blocker.write_text("")
    _, operator = _operator(shard)
    operator.arguments = [
        f"--output-prefix={blocker}/run" if arg.startswith("--output-prefix=") else arg
        for arg in operator.arguments
    ]

    with pytest.raises(AirflowException, match="exited with code 4") as failure:
        operator.execute(context={})

    assert not isinstance(failure.value, AirflowFailException)


def test_local_and_kubernetes_detect_are_the_same_mapped_task(shard):
    dag, operator = _operator(shard, settings=_settings(max_active_pods=5))
    mapped = dag.task_dict["detect"]

    assert mapped.task_id == "detect"
    assert mapped.max_active_tis_per_dag == 5
    assert mapped.retries == RETRIES
    assert mapped.map_index_template == MAP_INDEX_TEMPLATE
    assert (
        dag.get_template_env().from_string(MAP_INDEX_TEMPLATE).render(task=operator)
        == "shard 00000 (4 images)"
    )


def test_the_pod_sets_the_variable_the_engine_reads_its_image_from():
    from detection_engine.metrics import CONTAINER_IMAGE_ENV  # torch side

    assert IMAGE_ENV == CONTAINER_IMAGE_ENV


@pytest.mark.parametrize(
    ("code", "permanent", "says"),
    [
        (2, True, "code 2"),
        (3, True, "code 3"),
        (1, False, "code 1"),
        (4, False, "code 4"),
        (5, False, "preempted"),
    ],
)
def test_engine_exit_codes_fail_the_task_with_or_without_retry(code, permanent, says):
    from detection_pipeline.launch.local import engine_failure

    failure = engine_failure(code, "detection_engine: error: the reason")
    assert isinstance(failure, AirflowFailException) is permanent
    assert says in str(failure) and "the reason" in str(failure)
