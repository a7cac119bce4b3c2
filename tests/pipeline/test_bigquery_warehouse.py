"""The BigQuery warehouse's job protocol, through the real Google provider hook with BigQuery's server replaced.

`RecordingHook` (a real BigQueryHook) records what the warehouse sends and answers like the API: jobs are
real google-cloud-bigquery job objects built from the sent configuration, each configuration checked against
the client's model and each statement parsed as BigQuery SQL (`bigquery_double`), a job id sent twice raises
409 Conflict, a failed job raises what `job.result()` raises. These tests pin ids, retries and the exact
configurations; what the statements DO is the contract suite's job (`test_warehouse_contract.py`, which runs
them on DuckDB). File generations come from the real gcp-storage-emulator where a test needs them.
"""

from __future__ import annotations

import inspect
import json
import re
from datetime import UTC, date, datetime

import pyarrow as pa
import pytest
from airflow.providers.google.cloud.hooks.bigquery import BigQueryHook
from google.api_core.exceptions import Conflict, InternalServerError
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from detection_engine import layout, schema
from detection_pipeline.warehouse import WarehouseError, open_warehouse
from detection_pipeline.warehouse.bigquery_warehouse import BigQueryWarehouse, gcs_generations
from tests.pipeline.bigquery_double import check_job_configuration, parse_bigquery
from tests.pipeline.shard_files import run_record, write_run

PROJECT, DATASET = "test-project", "detections"
RUN_ID = "manual__2026-11-21T10:00:00+00:00"
FILES = {
    "gs://out/run/results/shard-00001.parquet": "1002",
    "gs://out/run/results/shard-00000.parquet": "1001",
    "gs://out/run/metrics/shard-00000.json": "2001",
    "gs://out/run/metrics/shard-00001.json": "2002",
}
RESULTS_URIS = [u for u in FILES if "/results/" in u]
METRICS_URIS = [u for u in FILES if "/metrics/" in u]


class RecordingHook(BigQueryHook):
    """The provider's hook whose server side is a recorder; calls are checked against the real signatures."""

    def __init__(self) -> None:
        super().__init__(gcp_conn_id="google_cloud_default", use_legacy_sql=False, location="US")
        self.client = bigquery.Client(project=PROJECT, credentials=AnonymousCredentials(), location="US")
        self.client._connection.api_request = self._no_network
        self.calls: list[tuple[str, dict]] = []
        self.jobs: dict[str, object] = {}
        self.tables: dict[str, dict] = {}  # tableId -> resource, for create_table's exists_ok answer
        self.failing: set[str] = set()  # job ids that fail when first run
        self.query_results: list[pa.Table] = []
        self.inserted_rows = 0  # what a MERGE reports in its DML statistics
        self.staged: set[str] = set()  # staging tables loaded and not dropped yet

    @staticmethod
    def _no_network(*args, **kwargs):
        raise AssertionError(f"a test reached for the BigQuery API: {args} {kwargs}")

    def _record(self, name: str, kwargs: dict) -> None:
        inspect.signature(getattr(BigQueryHook, name)).bind(self, **kwargs)  # raises on a wrong keyword
        self.calls.append((name, kwargs))

    def insert_job(self, **kwargs):
        self._record("insert_job", kwargs)
        job_id, config = kwargs["job_id"], kwargs["configuration"]
        if job_id in self.jobs:
            raise Conflict(f"Already Exists: Job {PROJECT}:US.{job_id}")
        check_job_configuration(config)
        if "query" in config:
            parse_bigquery(config["query"]["query"])
        resource = {
            "jobReference": {
                "jobId": job_id,
                "projectId": kwargs["project_id"],
                "location": kwargs["location"],
            },
            "configuration": config,
            "status": {"state": "DONE"},
        }
        if job_id in self.failing:
            resource["status"]["errorResult"] = {"reason": "backendError", "message": "transient"}
        if "query" in config:
            resource["statistics"] = {"query": {"dmlStats": {"insertedRowCount": str(self.inserted_rows)}}}
            job = bigquery.QueryJob.from_api_repr(resource, self.client)
            job.query_parameters  # noqa: B018 - parses every parameter, as the client would before sending
            if config["query"]["query"].lstrip().startswith("SELECT"):
                result = self.query_results.pop(0)
                job.to_arrow = lambda **_: result
        else:
            job = bigquery.LoadJob.from_api_repr(resource, self.client)
            assert job.source_uris == config["load"]["sourceUris"]
            if not job.error_result:
                self.staged.add(job.destination.table_id)
        self.jobs[job_id] = job
        if job.error_result:
            job.result()  # raises what the hook's own job.result() raises for a failed job
        return job

    def get_job(self, **kwargs):
        self._record("get_job", kwargs)
        return self.jobs[kwargs["job_id"]]

    def create_table(self, **kwargs):
        self._record("create_table", kwargs)
        resource = self.tables.setdefault(kwargs["table_id"], kwargs["table_resource"])
        return bigquery.Table.from_api_repr(resource)

    def update_table(self, **kwargs):
        self._record("update_table", kwargs)
        self.tables[kwargs["table_id"]]["schema"] = kwargs["table_resource"]["schema"]
        return kwargs["table_resource"]

    def table_exists(self, **kwargs):
        self._record("table_exists", kwargs)
        return kwargs["table_id"] in self.staged

    def delete_table(self, **kwargs):
        self._record("delete_table", kwargs)
        self.staged.discard(kwargs["table_id"].rsplit(".", 1)[-1])

    def sent(self, name: str = "insert_job") -> list[dict]:
        return [kwargs for method, kwargs in self.calls if method == name]


def fixed_generations(uris):
    return {uri: FILES[uri] for uri in uris}


@pytest.fixture(autouse=True)
def google_connection(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT",
        json.dumps({"conn_type": "google_cloud_platform", "extra": {"project": PROJECT}}),
    )


@pytest.fixture
def hook() -> RecordingHook:
    return RecordingHook()


@pytest.fixture
def warehouse(hook) -> BigQueryWarehouse:
    return BigQueryWarehouse(PROJECT, DATASET, hook=hook, fingerprint=fixed_generations)


def _job_ids(hook: RecordingHook) -> list[str]:
    return [kwargs["job_id"] for kwargs in hook.sent()]


# -- URIs and names ------------------------------------------------------------------------------


def test_open_warehouse_builds_the_bigquery_backend_with_the_providers_hook():
    warehouse = open_warehouse(
        "bigquery://my-project-1/analytics_v2?location=EU", gcp_conn_id="google_cloud_default"
    )
    assert isinstance(warehouse, BigQueryWarehouse)
    assert (warehouse.project, warehouse.dataset, warehouse.location) == (
        "my-project-1",
        "analytics_v2",
        "EU",
    )
    assert isinstance(warehouse.hook, BigQueryHook)
    assert warehouse.hook.location == "EU"
    assert warehouse.hook.use_legacy_sql is False
    assert warehouse.uri == "bigquery://my-project-1/analytics_v2?location=EU"


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("bigquery://Bad_Project/ds", "invalid BigQuery project id"),
        ("bigquery://my-project-1/ds-with-dash", "invalid BigQuery dataset"),
        ("bigquery://my-project-1/ds`; DROP", "invalid BigQuery dataset"),
        ("bigquery://my-project-1/ds/extra", "expected bigquery://project-id/dataset"),
        ("bigquery://my-project-1", "expected bigquery://project-id/dataset"),
        ("bigquery://my-project-1/ds?location=eu west", "invalid BigQuery location"),
        ("bigquery://my-project-1/ds?region=EU", "expected bigquery://project-id/dataset"),
        ("snowflake://x/y", "unsupported warehouse URI"),
    ],
)
def test_open_warehouse_refuses_bad_bigquery_uris(uri, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        open_warehouse(uri)


def test_table_names_are_validated_before_they_reach_sql(warehouse):
    assert warehouse.table_sql("results") == "`test-project.detections.results`"
    with pytest.raises(ValueError, match="invalid BigQuery table name"):
        warehouse.table_sql("results` WHERE TRUE; --")
    with pytest.raises(ValueError, match="invalid BigQuery project id"):
        BigQueryWarehouse("x", DATASET)


# -- tables --------------------------------------------------------------------------------------


def test_ensure_tables_creates_partitioned_clustered_tables_from_the_schema(warehouse, hook):
    warehouse.ensure_tables()
    created = {kwargs["table_id"]: kwargs for kwargs in hook.sent("create_table")}
    assert list(created) == ["results", "shard_metrics", "runs"]
    assert created["results"] == {
        "dataset_id": DATASET,
        "table_id": "results",
        "table_resource": {
            "tableReference": {"projectId": PROJECT, "datasetId": DATASET, "tableId": "results"},
            "schema": {"fields": schema.bigquery_schema(schema.RESULTS)},
            "timePartitioning": {"type": "DAY", "field": "run_date"},
            "clustering": {"fields": ["model_name", "run_id"]},
        },
        "project_id": PROJECT,
        "location": "US",
        "exists_ok": True,
    }
    assert created["shard_metrics"]["table_resource"]["timePartitioning"] == {
        "type": "DAY",
        "field": "run_date",
    }
    assert created["runs"]["table_resource"]["schema"] == {"fields": schema.bigquery_schema(schema.RUNS)}
    detections = next(
        f for f in created["results"]["table_resource"]["schema"]["fields"] if f["name"] == "detections"
    )
    assert (detections["type"], detections["mode"]) == ("RECORD", "REPEATED")
    assert hook.sent("update_table") == []

    warehouse.ensure_tables()  # idempotent: exists_ok, nothing altered
    assert hook.sent("update_table") == []


def test_ensure_tables_appends_nullable_columns_the_schema_gained(warehouse, hook):
    old_runs = schema.bigquery_schema(schema.RUNS)[:-3]
    hook.tables["runs"] = {
        "tableReference": {"projectId": PROJECT, "datasetId": DATASET, "tableId": "runs"},
        "schema": {"fields": old_runs},
    }
    warehouse.ensure_tables()
    (update,) = hook.sent("update_table")
    assert update == {
        "table_resource": {"schema": {"fields": schema.bigquery_schema(schema.RUNS)}},
        "fields": ["schema"],
        "dataset_id": DATASET,
        "table_id": "runs",
        "project_id": PROJECT,
    }


def test_ensure_tables_refuses_a_table_whose_columns_diverged(warehouse, hook):
    fields = schema.bigquery_schema(schema.RESULTS)
    hook.tables["results"] = {
        "tableReference": {"projectId": PROJECT, "datasetId": DATASET, "tableId": "results"},
        "schema": {"fields": [fields[1], fields[0], *fields[2:]]},
    }
    with pytest.raises(WarehouseError, match="not a prefix of schema.py"):
        warehouse.ensure_tables()


# -- loads ---------------------------------------------------------------------------------------


def test_load_run_stages_merges_and_drops_with_exact_configurations(warehouse, hook):
    hook.inserted_rows = 7
    stats = warehouse.load_run(RUN_ID, "2026-11-21", RESULTS_URIS, METRICS_URIS)

    assert (stats.results_files, stats.results_rows, stats.shard_metrics_rows) == (2, 7, 7)
    assert [name for name, _ in hook.calls] == [
        "insert_job",
        "table_exists",
        "insert_job",
        "delete_table",
    ] * 2
    load_results, merge_results, load_metrics, merge_metrics = hook.sent()
    ids = _job_ids(hook)
    digest = ids[0].removeprefix("detect_load_results_")
    assert re.fullmatch(r"[0-9a-f]{16}", digest)
    assert ids[1] == f"detect_merge_results_{digest}"
    staging = f"staging_results_{digest}"

    assert load_results == {
        "configuration": {
            "load": {
                "sourceUris": sorted(RESULTS_URIS),
                "destinationTable": {"projectId": PROJECT, "datasetId": DATASET, "tableId": staging},
                "schema": {"fields": schema.bigquery_schema(schema.RESULTS)},
                "writeDisposition": "WRITE_TRUNCATE",
                "createDisposition": "CREATE_IF_NEEDED",
                "sourceFormat": "PARQUET",
                "parquetOptions": {"enableListInference": True},
            }
        },
        "job_id": f"detect_load_results_{digest}",
        "project_id": PROJECT,
        "location": "US",
    }
    assert merge_results["configuration"] == {
        "query": {
            "query": (
                "MERGE `test-project.detections.results` AS T\n"
                "USING (\n"
                f"  SELECT * FROM `test-project.detections.{staging}`\n"
                "  WHERE IF(run_id = @run_id AND run_date = @run_date, TRUE,\n"
                "           ERROR('a shard file holds rows of another run id or run date'))\n"
                ") AS S\n"
                "ON FALSE\n"
                "WHEN NOT MATCHED BY SOURCE AND T.run_id = @run_id AND T.run_date = @run_date THEN DELETE\n"
                "WHEN NOT MATCHED BY TARGET THEN INSERT ROW"
            ),
            "useLegacySql": False,
            "parameterMode": "NAMED",
            "queryParameters": [
                {"parameterType": {"type": "STRING"}, "parameterValue": {"value": RUN_ID}, "name": "run_id"},
                {
                    "parameterType": {"type": "DATE"},
                    "parameterValue": {"value": "2026-11-21"},
                    "name": "run_date",
                },
            ],
        }
    }
    assert hook.sent("delete_table")[0] == {
        "table_id": f"{PROJECT}.{DATASET}.{staging}",
        "not_found_ok": True,
        "project_id": PROJECT,
    }

    metrics_digest = load_metrics["job_id"].removeprefix("detect_load_shard_metrics_")
    assert merge_metrics["job_id"] == f"detect_merge_shard_metrics_{metrics_digest}"
    assert load_metrics["configuration"]["load"] == {
        "sourceUris": sorted(METRICS_URIS),
        "destinationTable": {
            "projectId": PROJECT,
            "datasetId": DATASET,
            "tableId": f"staging_shard_metrics_{metrics_digest}",
        },
        "schema": {"fields": schema.bigquery_schema(schema.SHARD_METRICS)},
        "writeDisposition": "WRITE_TRUNCATE",
        "createDisposition": "CREATE_IF_NEEDED",
        "sourceFormat": "NEWLINE_DELIMITED_JSON",
        "ignoreUnknownValues": False,
        "maxBadRecords": 0,
    }
    assert "`test-project.detections.shard_metrics` AS T" in merge_metrics["configuration"]["query"]["query"]


def test_sql_carries_no_values_only_parameters(warehouse, hook):
    hostile = "manual__x'; DELETE FROM results WHERE TRUE; --"
    warehouse.load_run(hostile, date(2026, 11, 21), RESULTS_URIS, METRICS_URIS)
    hook.query_results.append(pa.table({"image_uri": pa.array([], pa.string())}))
    warehouse.processed_uris("model'--", 'weights"x', exclude_run_id=hostile)
    for kwargs in hook.sent():
        query = kwargs["configuration"].get("query")
        if query is None:
            continue
        for value in (hostile, "model'--", 'weights"x', "2026-11-21", "'ok'"):
            assert value not in query["query"]
    params = hook.sent()[-1]["configuration"]["query"]["queryParameters"]
    assert {p["name"]: p["parameterValue"]["value"] for p in params} == {
        "model_name": "model'--",
        "weights_id": 'weights"x',
        "ok": "ok",
        "exclude_run_id": hostile,
    }


def test_retried_load_reuses_ids_and_runs_nothing_twice(warehouse, hook):
    hook.inserted_rows = 5
    warehouse.load_run(RUN_ID, "2026-11-21", RESULTS_URIS, METRICS_URIS)
    first_ids = _job_ids(hook)
    hook.staged |= {f"staging_{i.removeprefix('detect_load_')}" for i in first_ids if "_load_" in i}
    hook.calls.clear()  # the first attempt died before it dropped its staging tables; the task is retried

    hook.inserted_rows = 999  # a job run again would report this; the existing MERGE's statistics say 5
    stats = warehouse.load_run(RUN_ID, "2026-11-21", list(reversed(RESULTS_URIS)), METRICS_URIS)

    assert _job_ids(hook) == first_ids  # same ids, file order does not matter
    assert [
        kwargs["job_id"] for kwargs in hook.sent("get_job")
    ] == first_ids  # each 409 answered by a look-up
    assert len(hook.jobs) == 4  # no job ran twice
    assert stats.results_rows == 5


def test_a_finished_load_sent_again_runs_again_under_fresh_ids(warehouse, hook):
    """Its staging table is gone, so the slice may have changed since (an empty re-plan, other files)."""
    warehouse.load_run(RUN_ID, "2026-11-21", RESULTS_URIS, METRICS_URIS)
    first_ids = _job_ids(hook)
    hook.calls.clear()
    warehouse.load_run(RUN_ID, "2026-11-21", RESULTS_URIS, METRICS_URIS)
    again = _job_ids(hook)
    load, rerun_load, merge = again[:3]
    assert load == first_ids[0]  # answered 409: finished
    assert re.fullmatch(re.escape(first_ids[0]) + r"_[0-9a-f]{12}", rerun_load)
    assert merge == first_ids[1] + rerun_load.removeprefix(first_ids[0])
    assert len(hook.jobs) == 4 + 4 and hook.staged == set()


def test_job_ids_differ_across_runs_dates_datasets_and_file_versions(hook):
    def load_ids(warehouse, run_id=RUN_ID, run_date="2026-11-21"):
        hook.calls.clear()
        warehouse.load_run(run_id, run_date, RESULTS_URIS, METRICS_URIS)
        return set(_job_ids(hook))

    base = BigQueryWarehouse(PROJECT, DATASET, hook=hook, fingerprint=fixed_generations)
    seen = load_ids(base)
    variants = [
        load_ids(base, run_id="scheduled__2026-11-21T00:00:00+00:00"),
        load_ids(base, run_date="2026-11-22"),
        load_ids(BigQueryWarehouse(PROJECT, "other_dataset", hook=hook, fingerprint=fixed_generations)),
        load_ids(
            BigQueryWarehouse(
                PROJECT,
                DATASET,
                hook=hook,
                fingerprint=lambda uris: {u: FILES[u] + "-rewritten" for u in uris},
            )
        ),
    ]
    for ids in variants:
        assert len(ids) == 4
        assert not ids & seen
        seen |= ids


def test_an_earlier_failed_job_is_sent_again_under_the_next_id(warehouse, hook):
    warehouse.load_run(RUN_ID, "2026-11-21", RESULTS_URIS, METRICS_URIS)
    merge_id = _job_ids(hook)[1]
    hook.jobs[merge_id]._properties["status"]["errorResult"] = {"reason": "backendError", "message": "x"}
    hook.staged.add(f"staging_results_{merge_id.removeprefix('detect_merge_results_')}")  # kept: MERGE failed
    hook.calls.clear()

    warehouse.load_run(RUN_ID, "2026-11-21", RESULTS_URIS, METRICS_URIS)

    ids = _job_ids(hook)
    assert ids[:3] == [ids[0], merge_id, f"{merge_id}_r1"]
    assert hook.jobs[f"{merge_id}_r1"].error_result is None


def test_a_failing_job_fails_the_load_and_the_retry_moves_on(warehouse, hook):
    hook.calls.clear()
    warehouse.load_run(RUN_ID, "2026-11-21", RESULTS_URIS, METRICS_URIS)
    load_id = _job_ids(hook)[0]
    hook.jobs.clear()
    hook.calls.clear()
    hook.failing.add(load_id)
    with pytest.raises(InternalServerError, match="transient"):
        warehouse.load_run(RUN_ID, "2026-11-21", RESULTS_URIS, METRICS_URIS)
    assert hook.sent("delete_table") == []  # nothing merged, staging kept for the retry

    hook.failing.clear()
    warehouse.load_run(RUN_ID, "2026-11-21", RESULTS_URIS, METRICS_URIS)
    assert f"{load_id}_r1" in hook.jobs


def test_a_job_that_keeps_failing_ends_with_a_clear_error(warehouse, hook):
    from detection_pipeline.warehouse import bigquery_warehouse

    config = {"query": {"query": "DELETE FROM `p.d.t` WHERE TRUE", "useLegacySql": False}}
    for suffix in ["", *(f"_r{i}" for i in range(1, bigquery_warehouse.MAX_JOB_ATTEMPTS))]:
        hook.failing.add(f"detect_x{suffix}")
        with pytest.raises(InternalServerError):
            hook.insert_job(
                configuration=config, job_id=f"detect_x{suffix}", project_id=PROJECT, location="US"
            )
    with pytest.raises(WarehouseError, match="detect_x: 5 earlier attempts failed"):
        warehouse.run_job(config, "detect_x")


def test_a_job_still_running_from_an_earlier_attempt_is_awaited(warehouse, hook):
    class RunningJob:
        state, error_result, waited = "RUNNING", None, False

        def result(self):
            self.waited, self.state = True, "DONE"

    running = hook.jobs["detect_y"] = RunningJob()
    assert warehouse.run_job({"query": {"query": "MERGE y"}}, "detect_y") is running
    assert running.waited


def test_an_empty_run_deletes_its_rows_without_loading(warehouse, hook):
    stats = warehouse.load_run(RUN_ID, "2026-11-21", [], [])
    assert (stats.results_rows, stats.shard_metrics_rows) == (0, 0)
    deletes = hook.sent()
    assert [d["configuration"]["query"]["query"] for d in deletes] == [
        "DELETE FROM `test-project.detections.results` WHERE run_id = @run_id AND run_date = @run_date",
        "DELETE FROM `test-project.detections.shard_metrics` WHERE run_id = @run_id AND run_date = @run_date",
    ]
    hook.calls.clear()
    warehouse.load_run(RUN_ID, "2026-11-21", [], [])
    assert not {d["job_id"] for d in deletes} & set(_job_ids(hook))  # a delete is always sent again


def test_bad_load_inputs_are_refused_before_any_job(warehouse, hook):
    with pytest.raises(ValueError, match="gs:// URIs only"):
        warehouse.load_run(RUN_ID, "2026-11-21", ["/local/shard-00000.parquet"], [])
    with pytest.raises(ValueError, match="invalid run date"):
        warehouse.load_run(RUN_ID, "21/11/2026", RESULTS_URIS, METRICS_URIS)
    with pytest.raises(ValueError, match="invalid run id"):
        warehouse.load_run("", "2026-11-21", RESULTS_URIS, METRICS_URIS)
    assert hook.calls == []


# -- generations from real GCS (the emulator) ----------------------------------------------------


def test_generations_come_from_gcs_and_change_when_a_shard_is_rewritten(gcs_bucket):
    prefix = layout.run_prefix(f"{gcs_bucket}/out", RUN_ID)
    results, metrics = write_run(prefix, RUN_ID, [3, 2])
    first = gcs_generations([*results, *metrics])
    assert set(first) == {*results, *metrics}
    assert gcs_generations([*results, *metrics]) == first  # stable while nothing changes

    write_run(prefix, RUN_ID, [3])  # the retried shard 0 rewrites its two files
    second = gcs_generations([*results, *metrics])
    assert second[results[0]] != first[results[0]] and second[metrics[0]] != first[metrics[0]]
    assert second[results[1]] == first[results[1]]


def test_missing_shard_files_are_named_and_nothing_is_loaded(gcs_bucket, hook):
    prefix = layout.run_prefix(f"{gcs_bucket}/out", RUN_ID)
    results, metrics = write_run(prefix, RUN_ID, [3])
    ghost = layout.shard_results_uri(prefix, 7)
    warehouse = BigQueryWarehouse(PROJECT, DATASET, hook=hook)
    with pytest.raises(
        WarehouseError, match=re.escape(f"1 shard file(s) missing, nothing was loaded: ['{ghost}']")
    ):
        warehouse.load_run(RUN_ID, "2026-11-21", [*results, ghost], metrics)
    assert hook.calls == []


# -- run record ----------------------------------------------------------------------------------


def _record(**overrides) -> dict:
    return run_record(
        **{"run_id": RUN_ID, "recorded_at": datetime(2026, 11, 21, 11, 0, tzinfo=UTC), **overrides}
    )


def test_run_record_is_one_parameterised_merge_replacing_the_runs_row(warehouse, hook):
    warehouse.write_run_record(_record())
    (sent,) = hook.sent()
    assert re.fullmatch(r"detect_run_record_[0-9a-f]{16}", sent["job_id"])
    query = sent["configuration"]["query"]
    assert query["query"].startswith(
        "MERGE `test-project.detections.runs` AS T\nUSING (\n  SELECT\n    @run_id AS run_id,"
    )
    assert query["query"].endswith(
        "ON FALSE\n"
        "WHEN NOT MATCHED BY SOURCE AND T.run_id = @run_id THEN DELETE\n"
        "WHEN NOT MATCHED BY TARGET THEN INSERT ROW"
    )
    params = {p["name"]: p for p in query["queryParameters"]}
    assert list(params) == schema.column_names(schema.RUNS)
    assert params["run_date"] == {
        "parameterType": {"type": "DATE"},
        "parameterValue": {"value": "2026-11-21"},
        "name": "run_date",
    }
    assert params["listed"]["parameterType"] == {"type": "INT64"}
    assert params["listed"]["parameterValue"] == {"value": "10"}
    assert params["wall_s"]["parameterValue"] == {"value": 12.5}
    assert params["random_weights"]["parameterValue"] == {"value": "false"}
    assert params["recorded_at"]["parameterValue"] == {"value": "2026-11-21 11:00:00+00:00"}
    assert params["gpu_type"] == {
        "parameterType": {"type": "STRING"},
        "parameterValue": {"value": None},
        "name": "gpu_type",
    }
    for name in ("run_id", "input_uri", "gs://in"):
        assert f"'{name}'" not in query["query"]

    warehouse.write_run_record(_record())  # the same record again: same id, 409, not run twice
    assert _job_ids(hook) == [sent["job_id"]] * 2 and len(hook.jobs) == 1
    warehouse.write_run_record(_record(ok=7, failed=2))
    assert len(hook.jobs) == 2


def test_a_bad_run_record_is_refused_before_any_job(warehouse, hook):
    bad = _record(processed="9", extra_column=1)
    del bad["ok"]
    with pytest.raises(ValueError) as info:
        warehouse.write_run_record(bad)
    message = str(info.value)
    assert "missing columns ['ok']" in message
    assert "unexpected columns ['extra_column']" in message
    assert "processed: expected an integer" in message
    assert hook.calls == []


# -- reads ---------------------------------------------------------------------------------------


def test_processed_uris_is_a_parameterised_query(warehouse, hook):
    hook.query_results.append(pa.table({"image_uri": ["gs://a/1.jpg", "gs://a/2.jpg"]}))
    uris = warehouse.processed_uris("fasterrcnn_resnet50_fpn", "COCO_V1")
    assert uris.to_pylist() == ["gs://a/1.jpg", "gs://a/2.jpg"]
    assert isinstance(uris, pa.Array)
    (sent,) = hook.sent()
    assert re.fullmatch(r"detect_query_[0-9a-f]{32}", sent["job_id"])
    assert sent["configuration"]["query"]["query"] == (
        "SELECT DISTINCT image_uri FROM `test-project.detections.results`\n"
        "WHERE model_name = @model_name AND weights_id = @weights_id AND status = @ok\n"
        "  AND (@exclude_run_id IS NULL OR run_id != @exclude_run_id)"
    )
    exclude = sent["configuration"]["query"]["queryParameters"][-1]
    assert exclude == {
        "parameterType": {"type": "STRING"},
        "parameterValue": {"value": None},
        "name": "exclude_run_id",
    }


def test_run_counts_reads_every_count_verify_needs(warehouse, hook):
    from detection_pipeline.warehouse import RUN_COUNT_KEYS

    hook.query_results.append(pa.table({key: [i] for i, key in enumerate(RUN_COUNT_KEYS)}))
    counts = warehouse.run_counts(RUN_ID)
    assert counts == {key: i for i, key in enumerate(RUN_COUNT_KEYS)}
    query = hook.sent()[0]["configuration"]["query"]
    assert "FROM `test-project.detections.results`\nWHERE run_id = @run_id" in query["query"]
    assert [p["name"] for p in query["queryParameters"]] == ["run_id", "ok", "error"]


def test_report_reads_return_rows(warehouse, hook):
    record = {"run_id": RUN_ID, "run_date": date(2026, 11, 21)}
    hook.query_results += [
        pa.Table.from_pylist([record]),
        pa.Table.from_pylist([]),
        pa.Table.from_pylist([record]),
    ]
    assert warehouse.runs() == [record]
    assert warehouse.run_record("nope") is None
    assert warehouse.run_record(RUN_ID) == record
    hook.query_results += [pa.table({"x": [1]})] * 4
    for read in (
        warehouse.shard_metrics,
        warehouse.detections_per_class,
        warehouse.top_errors,
        warehouse.latency_quantiles,
    ):
        assert read(RUN_ID).num_rows == 1
    for kwargs in hook.sent():
        assert RUN_ID not in kwargs["configuration"]["query"]["query"]
