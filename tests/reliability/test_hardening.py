"""Hostile or careless input to the DAG: refused before anything runs, never executed as SQL or shell, and no
credential written to the warehouse, the logs or the run's files.

Already covered elsewhere, and not repeated here:

- every config field's rejections and their messages, and that the Param schema refuses the same values before
  a run exists (SQL in a BigQuery dataset name included): tests/pipeline/test_config.py
  (`test_a_bad_value_is_refused_naming_its_field`, `test_unknown_keys_are_refused_with_a_suggestion`);
- '..', other schemes and control characters in URIs: tests/pipeline/test_uris.py
  (`test_check_storage_uri_refuses`), tests/pipeline/test_settings.py for the deployment variables;
- BigQuery table, dataset and project names checked before SQL, and SQL that carries only parameters:
  tests/pipeline/test_bigquery_warehouse.py (`test_table_names_are_validated_before_they_reach_sql`,
  `test_sql_carries_no_values_only_parameters`, `test_processed_uris_is_a_parameterised_query`);
- engine arguments as a list of one `--flag=value` each (shell metacharacters and leading dashes stay
  literal): tests/pipeline/test_engine_args.py;
- the pod runs as non-root (uid 10001, as the Dockerfile creates it) with a read-only root filesystem, no
  privilege escalation, all capabilities dropped, seccomp RuntimeDefault, no service account token:
  tests/pipeline/test_pod.py (`test_pod_runs_as_non_root_with_a_read_only_root_and_writable_scratch`,
  `test_pod_runs_as_the_user_the_image_creates`);
- the weights file's SHA-256 is checked when given, and a mismatch exits 3, which fails the task without a
  retry: tests/engine/test_cli.py (`test_state_dict_weights_are_recorded_and_a_wrong_sha256_exits_3`),
  tests/pipeline/test_local_launcher.py (`test_a_bad_argument_fails_the_task_with_the_engine_message_and_no_retry`);
- credentials dropped from the engine's error reasons: tests/engine/test_fetch.py
  (`test_http_reasons_drop_credentials_from_urls`).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pytest

from detection_engine import layout
from detection_pipeline.warehouse import open_warehouse
from tests.pipeline.shard_files import RUN_DATE, write_run
from tests.reliability import runs
from tests.reliability.http_files import SECRETS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # DAG runs: a regression fails, never hangs

DAY = dt.datetime(2026, 3, 7, tzinfo=dt.UTC)

# conf override -> the field the refusal must name. Each is accepted by the Param schema (so the run starts)
# or refused by it (so no run starts); either way nothing may run and nothing may be written.
REFUSED_CONFS = {
    "unknown key": ({"batchsize": 4}, "batchsize"),
    "out of range": ({"max_detections": 100_000}, "max_detections"),
    "min above max": ({"min_size": 96, "max_size": 64}, "min_size"),
    "'..' in output": ({"output_uri": "{root}/images/x/../../escaped"}, "output_uri"),
    "'..' in input": ({"input_uri": "{root}/images/../escaped.txt"}, "input_uri"),
    "SQL in the warehouse": ({"warehouse": "bigquery://my-project/ds`; DROP TABLE results; --"}, "warehouse"),
}


@pytest.mark.parametrize(("override", "field"), REFUSED_CONFS.values(), ids=REFUSED_CONFS.keys())
def test_a_bad_conf_fails_at_validate_config_before_any_shard_or_write(
    batch_dag, tmp_path, capfd, override, field
):
    images = tmp_path / "images"
    images.mkdir()
    conf = runs.tiny_conf(tmp_path, str(images))
    conf |= {
        key: value.format(root=tmp_path) if isinstance(value, str) else value
        for key, value in override.items()
    }

    try:
        run = runs.run_dag(batch_dag, conf, DAY)
    except Exception as refused:  # the Param schema refused it as the run was created
        assert field in str(refused)
    else:
        assert runs.state(run) == "failed"
        tasks = runs.task_instances(batch_dag.dag_id, run.run_id)
        assert tasks.pop(("validate_config", -1)) == ("failed", 1), "failed at once, without retries"
        assert {state for state, _ in tasks.values()} <= {"upstream_failed", None}, "nothing else ran"
        assert f"invalid run config: {field}: " in capfd.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"], "no output, no warehouse"


def test_a_manifest_entry_with_parent_segments_is_rejected_counted_and_never_read(batch_dag, tmp_path):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (64, 48), (10, 200, 90)).save(images / "a.png")
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"{images}/a.png\n{images}/../../../etc/shadow.jpg\n")
    conf = runs.tiny_conf(tmp_path, str(listing))

    run = runs.run_dag(batch_dag, conf, DAY)

    assert runs.state(run) == "success"
    with duckdb.connect(conf["warehouse"].removeprefix("duckdb://"), read_only=True) as con:
        assert con.sql("SELECT image_uri, status FROM results").fetchall() == [(f"{images}/a.png", "ok")]
        [(rejected, examples)] = con.sql("SELECT rejected, rejected_examples FROM runs").fetchall()
    assert rejected == 1 and "../../../etc/shadow.jpg" in examples


def test_sql_in_the_warehouse_path_uris_and_run_ids_is_stored_as_data(tmp_path):
    """DuckDB paths, image URIs and run ids reach the warehouse as a file name and as query parameters."""
    root = tmp_path / "o'Brien; DROP TABLE runs; --"
    warehouse = open_warehouse(f"duckdb://{root}/w'); DELETE FROM results; --.duckdb")
    hostile_run = "r'); DROP TABLE results; --"
    hostile_uris = "/data/x'); DROP TABLE shard_metrics; --/img"
    warehouse.ensure_tables()

    warehouse.load_run("innocent", RUN_DATE, *write_run(str(root / "innocent"), "innocent", [3]))
    warehouse.load_run(
        hostile_run, RUN_DATE, *write_run(str(root / "hostile"), hostile_run, [2], uri_base=hostile_uris)
    )

    assert warehouse.path == root / "w'); DELETE FROM results; --.duckdb" and warehouse.path.is_file()
    assert warehouse.run_counts("innocent")["rows"] == 3
    assert (
        warehouse.run_counts(hostile_run)["rows"],
        warehouse.run_counts(hostile_run)["shard_metrics_rows"],
    ) == (2, 1)
    stored = warehouse.processed_uris("fasterrcnn_resnet50_fpn", "COCO_V1").to_pylist()
    assert sorted(uri for uri in stored if uri.startswith("/data/")) == [
        f"{hostile_uris}-00000-{i:06d}.jpg" for i in range(2)
    ]


# -- credentials -------------------------------------------------------------------------------------------------


def test_http_credentials_and_tokens_never_reach_the_run_record_error_rows_or_files(corpus_run):
    """The corpus run's manifest and three images came from http://user:password@host/...?token=..."""
    with duckdb.connect(corpus_run.conf["warehouse"].removeprefix("duckdb://"), read_only=True) as con:
        record = con.execute("SELECT * FROM runs WHERE run_id = ?", [corpus_run.run_id]).fetchone()
        errors = [e for (e,) in con.execute("SELECT error FROM results WHERE error IS NOT NULL").fetchall()]
    remote_errors = {
        error.split(":")[0] for error in errors if "HTTP" in error or error.startswith("not_found: no such")
    }

    assert _leaks(str(record)) == [], "config_json and input_uri are redacted"
    assert f"http://***@127.0.0.1:{corpus_run.http.port}/inputs.txt?***" in str(record)
    assert _leaks("\n".join(errors)) == []
    assert {"permission_denied", "not_found"} <= remote_errors, (
        "the remote error rows are there, reasons intact"
    )
    output = Path(corpus_run.conf["output_uri"])
    for page in (Path(layout.report_uri(corpus_run.prefix)), output / "dashboard.html"):
        assert _leaks(page.read_text()) == [], page.name


def test_http_credentials_never_reach_the_task_logs(corpus_run):
    assert f"manifest of http://***@127.0.0.1:{corpus_run.http.port}/inputs.txt?***" in corpus_run.log
    for line in ("Loaded run", "shard 1: wrote", "Done. Returned value was"):  # pipeline, engine, Airflow
        assert line in corpus_run.log, f"the captured log lacks {line!r}"
    assert _leaks(corpus_run.log) == []


def test_only_the_runs_own_config_holds_credentials_in_xcom(corpus_run, batch_dag):
    """validate_config hands the conf as given to the tasks that fetch the input (Airflow keeps the same in the
    run's conf); every other XCom, the engine arguments and the run record included, is free of them."""
    holding = {
        (task_id, key)
        for task_id, _, key, value in runs.xcoms(batch_dag.dag_id, corpus_run.run_id)
        if _leaks(str(value))
    }
    assert holding == {("validate_config", "return_value")}  # one XCom: dict returns are not split by key
    shard_kwargs = [
        value
        for task_id, _, key, value in runs.xcoms(batch_dag.dag_id, corpus_run.run_id)
        if (task_id, key) == ("launch_kwargs", "return_value")
    ]
    [arguments] = [[kwargs["arguments"] for kwargs in value] for value in shard_kwargs]
    assert all(isinstance(a, str) and a.startswith("--") and "=" in a for args in arguments for a in args)


def _leaks(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]
