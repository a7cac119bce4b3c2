"""The production warehouse: BigQuery, driven through the Google provider's BigQueryHook.insert_job.

Loading a run replaces the run's slice atomically, per table:

1. a load job copies the run's shard files (the explicit list, never a wildcard, so stale shard files of an
   earlier attempt with more shards are not picked up) into a per-run staging table, WRITE_TRUNCATE;
2. one MERGE swaps the run's rows for the staging rows in a single atomic statement:
   `ON FALSE WHEN NOT MATCHED BY SOURCE AND T.run_id = @run_id AND T.run_date = @run_date THEN DELETE
   WHEN NOT MATCHED BY TARGET THEN INSERT ROW`; the run_date predicate prunes to the run's partition;
3. the staging table is dropped.

Why not WRITE_TRUNCATE straight into the run's partition (`results$20261121`): the partition holds every run
of that date (manual runs, backfills, other models), and truncating it would wipe them.

Job ids are deterministic: `detect_{load|merge}_{table}_{hash}`, the hash covering the dataset, the run,
the table and every file's URI with its GCS generation. A retried task re-sends the same ids; BigQuery answers
409 Already Exists and the existing job is awaited and checked instead of run twice. A rewritten shard file
has a new generation, hence new ids, so a re-run with new files is never mistaken for one already loaded.
An existing job that FAILED is not final: the next id in the deterministic sequence `{id}_r1`, `{id}_r2`, ...
is sent, so a transient failure cannot wedge the run forever.
A replace that FINISHED (its staging table already dropped) is not final either: the run's slice may have
changed since (an empty re-plan, another set of files), so the same files loaded again run under fresh ids.

Every value in SQL is a query parameter; only identifiers (validated project, dataset and table names) are
written into the text, because BigQuery cannot parameterise them.
"""

from __future__ import annotations

import logging
import posixpath
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import date
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from detection_engine import schema, storage
from detection_pipeline import uris
from detection_pipeline.warehouse.base import (
    TABLE_ID,
    LoadStats,
    Warehouse,
    WarehouseError,
    check_run_id,
    columns_to_add,
    normalise_record,
    record_hash,
    to_date,
)

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

JOB_PREFIX = "detect"
MAX_JOB_ATTEMPTS = 5  # ids {id}, {id}_r1 .. _r4: how many FAILED earlier jobs a load steps over
_DONE = "DONE"

# Table layout: results and shard_metrics are partitioned by run date (a run's rows live in one partition),
# results clustered for the incremental lookup (model_name) and the per-run replace and checks (run_id).
TABLE_OPTIONS: dict[str, dict] = {
    "results": {
        "timePartitioning": {"type": "DAY", "field": "run_date"},
        "clustering": {"fields": ["model_name", "run_id"]},
    },
    "shard_metrics": {
        "timePartitioning": {"type": "DAY", "field": "run_date"},
        "clustering": {"fields": ["run_id"]},
    },
    "runs": {"clustering": {"fields": ["model_name", "run_id"]}},
}

Fingerprint = Callable[[Sequence[str]], dict[str, str]]


def gcs_generations(uris: Sequence[str]) -> dict[str, str]:
    """URI -> object generation (GCS), listed once per folder; raises naming every file that is missing.

    The generation changes whenever an object is rewritten, which is what makes a load's job id change when,
    and only when, its files do.
    """
    by_folder: dict[str, list[str]] = defaultdict(list)
    for uri in uris:
        by_folder[posixpath.dirname(uri)].append(uri)
    versions: dict[str, str] = {}
    missing: list[str] = []
    for folder, members in sorted(by_folder.items()):
        fs, path = storage.filesystem_for(folder)
        try:
            listing = fs.ls(path, detail=True, refresh=True)
        except FileNotFoundError:
            listing = []
        found = {entry["name"].rstrip("/"): entry for entry in listing}  # listed names are paths already
        for uri in members:
            entry = found.get(storage.path_of(uri))
            if entry is None:
                missing.append(uri)
                continue
            token = (
                entry.get("generation") or entry.get("etag") or f"{entry.get('size')}:{entry.get('mtime')}"
            )
            versions[uri] = str(token)
    if missing:
        raise WarehouseError(f"{len(missing)} shard file(s) missing, nothing was loaded: {missing}")
    return versions


def query_parameter(name: str, type_: str, value: Any) -> dict:
    """One named scalar parameter in the REST API's shape, serialised by the BigQuery client library."""
    from google.cloud.bigquery import ScalarQueryParameter

    return ScalarQueryParameter(name, type_, value).to_api_repr()


def query_configuration(sql: str, parameters: list[dict]) -> dict:
    """A standard-SQL query job; the parameter keys only when there are parameters, as the client sends them."""
    query: dict[str, Any] = {"query": sql, "useLegacySql": False}
    if parameters:
        query |= {"parameterMode": "NAMED", "queryParameters": parameters}
    return {"query": query}


class BigQueryWarehouse(Warehouse):
    def __init__(
        self,
        project: str,
        dataset: str,
        *,
        location: str | None = None,
        gcp_conn_id: str = "google_cloud_default",
        hook: Any = None,
        fingerprint: Fingerprint = gcs_generations,
    ) -> None:
        uris.check_bigquery_names(project, dataset, location)
        self.project, self.dataset, self.location = project, dataset, location
        self.gcp_conn_id = gcp_conn_id
        self._hook = hook
        self._fingerprint = fingerprint

    @property
    def uri(self) -> str:
        suffix = f"?location={self.location}" if self.location else ""
        return f"bigquery://{self.project}/{self.dataset}{suffix}"

    def __repr__(self) -> str:
        return f"BigQueryWarehouse({self.uri!r})"

    @property
    def hook(self):
        """The provider's hook, built on first use (never at parse time); location defaults to the connection's."""
        if self._hook is None:
            from airflow.providers.google.cloud.hooks.bigquery import BigQueryHook

            kwargs: dict[str, Any] = {"gcp_conn_id": self.gcp_conn_id, "use_legacy_sql": False}
            if self.location:
                kwargs["location"] = self.location
            self._hook = BigQueryHook(**kwargs)
        return self._hook

    # -- names ------------------------------------------------------------------------------------

    def table_ref(self, table: str) -> dict:
        if not TABLE_ID.match(table):
            raise ValueError(f"invalid BigQuery table name {table!r}")
        return {"projectId": self.project, "datasetId": self.dataset, "tableId": table}

    def table_sql(self, table: str) -> str:
        """The table's name as SQL: validated parts in backticks, the only non-parameter text in a query."""
        ref = self.table_ref(table)
        return f"`{ref['projectId']}.{ref['datasetId']}.{ref['tableId']}`"

    # -- jobs -------------------------------------------------------------------------------------

    def _location(self) -> str | None:
        return self.location or getattr(self.hook, "location", None)

    def run_job(self, configuration: dict, job_id: str) -> Any:
        """Run a job under a deterministic id, exactly once across retries.

        409 Already Exists means an earlier attempt sent this id: wait for that job and accept it when it
        succeeded; when it failed, move on to the next id of the sequence.
        """
        from google.api_core.exceptions import Conflict, GoogleAPICallError

        for attempt in range(MAX_JOB_ATTEMPTS):
            attempt_id = job_id if attempt == 0 else f"{job_id}_r{attempt}"
            try:
                return self.hook.insert_job(
                    configuration=configuration,
                    job_id=attempt_id,
                    project_id=self.project,
                    location=self._location(),
                )
            except Conflict:
                job = self.hook.get_job(job_id=attempt_id, project_id=self.project, location=self._location())
                if job.state != _DONE:
                    log.info("Job %s is still running from an earlier attempt; waiting for it", attempt_id)
                    try:
                        job.result()
                    except GoogleAPICallError:
                        if job.state != _DONE:  # not the job failing: the wait itself did
                            raise
                if job.error_result is None:
                    log.info(
                        "Job %s already succeeded in an earlier attempt; not running it again", attempt_id
                    )
                    return job
                log.warning(
                    "Job %s failed in an earlier attempt (%s); sending it again", attempt_id, job.error_result
                )
        raise WarehouseError(
            f"job {job_id}: {MAX_JOB_ATTEMPTS} earlier attempts failed (ids {job_id}, {job_id}_r1 ...); "
            "see them in BigQuery's job history"
        )

    def query(self, sql: str, parameters: list[dict]) -> pa.Table:
        """A read-only query; its id is unique, as its result must reflect the tables now."""
        return self._query_job(sql, parameters).to_arrow()

    def query_frame(self, sql: str, parameters: list[dict]) -> pd.DataFrame:
        """`query` as a DataFrame, in the client's own dtypes (nullable Int64 and boolean, dbdate)."""
        return self._query_job(sql, parameters).to_dataframe()

    def _query_job(self, sql: str, parameters: list[dict]) -> Any:
        return self.hook.insert_job(
            configuration=query_configuration(sql, parameters),
            job_id=f"{JOB_PREFIX}_query_{uuid.uuid4().hex}",
            project_id=self.project,
            location=self._location(),
        )

    # -- tables -----------------------------------------------------------------------------------

    def table_resource(self, table: str) -> dict:
        return {
            "tableReference": self.table_ref(table),
            "schema": {"fields": schema.bigquery_schema(schema.TABLES[table])},
            **TABLE_OPTIONS[table],
        }

    def ensure_tables(self) -> None:
        """Create missing tables (the dataset must exist); append NULLABLE columns schema.py gained since."""
        for table, fields in schema.TABLES.items():
            existing = self.hook.create_table(
                dataset_id=self.dataset,
                table_id=table,
                table_resource=self.table_resource(table),
                project_id=self.project,
                location=self._location(),
                exists_ok=True,
            )
            names = [field.name for field in existing.schema]
            added = columns_to_add(table, fields, names)
            if added:
                log.info("Adding columns %s to %s", [f.name for f in added], self.table_sql(table))
                self.hook.update_table(
                    table_resource={"schema": {"fields": schema.bigquery_schema(fields)}},
                    fields=["schema"],
                    dataset_id=self.dataset,
                    table_id=table,
                    project_id=self.project,
                )

    # -- loads ------------------------------------------------------------------------------------

    def load_run(
        self, run_id: str, run_date: str | date, results_uris: list[str], metrics_uris: list[str]
    ) -> LoadStats:
        check_run_id(run_id)
        day = to_date(run_date)
        all_uris = [*results_uris, *metrics_uris]
        not_gcs = [uri for uri in all_uris if not uri.startswith("gs://")]
        if not_gcs:
            raise ValueError(f"BigQuery loads read gs:// URIs only; got {not_gcs[:3]}")
        versions = self._fingerprint(all_uris) if all_uris else {}
        results = self.replace_run_slice("results", run_id, day, results_uris, versions)
        metrics = self.replace_run_slice("shard_metrics", run_id, day, metrics_uris, versions)
        log.info("Loaded run %s: %d results rows from %d files, %d shard metrics rows",
                 run_id, results, len(results_uris), metrics)  # fmt: skip
        return LoadStats(run_id, len(results_uris), results, metrics)

    def replace_run_slice(
        self, table: str, run_id: str, run_date: date, uris: list[str], versions: dict[str, str]
    ) -> int:
        """Make the run's rows in `table` exactly the rows of `uris`; returns the number of rows inserted."""
        run_params = [
            query_parameter("run_id", "STRING", run_id),
            query_parameter("run_date", "DATE", run_date),
        ]
        if not uris:
            # Nothing to insert: a DELETE is idempotent, and its id must be fresh (a deterministic one would
            # make "empty, then loaded, then empty again" skip the second delete).
            sql = f"DELETE FROM {self.table_sql(table)} WHERE run_id = @run_id AND run_date = @run_date"
            self.hook.insert_job(
                configuration=query_configuration(sql, run_params),
                job_id=f"{JOB_PREFIX}_delete_{table}_{uuid.uuid4().hex}",
                project_id=self.project,
                location=self._location(),
            )
            return 0
        files = sorted(uris)
        digest = record_hash(
            self.project, self.dataset, table, run_id, run_date, [[uri, versions.get(uri)] for uri in files]
        )
        staging = f"staging_{table}_{digest}"
        load_id, merge_id = f"{JOB_PREFIX}_load_{table}_{digest}", f"{JOB_PREFIX}_merge_{table}_{digest}"
        load = self.load_configuration(table, staging, files)
        self.run_job(load, load_id)
        if not self.hook.table_exists(dataset_id=self.dataset, table_id=staging, project_id=self.project):
            # This exact replace finished before, MERGE and drop included, and the slice may have changed
            # since (another load of the run): run it again under fresh ids. Replacing twice adds nothing.
            fresh = uuid.uuid4().hex[:12]
            load_id, merge_id = f"{load_id}_{fresh}", f"{merge_id}_{fresh}"
            self.run_job(load, load_id)
        merge = self.run_job(query_configuration(self.merge_sql(table, staging), run_params), merge_id)
        self.hook.delete_table(
            table_id=f"{self.project}.{self.dataset}.{staging}", not_found_ok=True, project_id=self.project
        )
        return _inserted_rows(merge)

    def load_configuration(self, table: str, staging: str, uris: list[str]) -> dict:
        load: dict[str, Any] = {
            "sourceUris": uris,
            "destinationTable": self.table_ref(staging),
            "schema": {"fields": schema.bigquery_schema(schema.TABLES[table])},
            "writeDisposition": "WRITE_TRUNCATE",
            "createDisposition": "CREATE_IF_NEEDED",
        }
        if table == "shard_metrics":
            load |= {
                "sourceFormat": "NEWLINE_DELIMITED_JSON",
                "ignoreUnknownValues": False,
                "maxBadRecords": 0,
            }
        else:
            # List inference reads Parquet LIST columns as REPEATED, so `detections` lands as a REPEATED
            # RECORD (and `box` as REPEATED FLOAT64), not as nested list/element wrapper records.
            load |= {"sourceFormat": "PARQUET", "parquetOptions": {"enableListInference": True}}
        return {"load": load}

    def merge_sql(self, table: str, staging: str) -> str:
        """Swap the run's rows for the staging rows in one statement; a row of another run aborts it."""
        return (
            f"MERGE {self.table_sql(table)} AS T\n"
            f"USING (\n"
            f"  SELECT * FROM {self.table_sql(staging)}\n"
            f"  WHERE IF(run_id = @run_id AND run_date = @run_date, TRUE,\n"
            f"           ERROR('a shard file holds rows of another run id or run date'))\n"
            f") AS S\n"
            f"ON FALSE\n"
            f"WHEN NOT MATCHED BY SOURCE AND T.run_id = @run_id AND T.run_date = @run_date THEN DELETE\n"
            f"WHEN NOT MATCHED BY TARGET THEN INSERT ROW"
        )

    def write_run_record(self, record: dict) -> None:
        """Replace the run's row with one parameterised MERGE (one parameter per column of schema.RUNS)."""
        row = normalise_record(schema.RUNS, record)
        parameters = [query_parameter(f.name, f.type, row[f.name]) for f in schema.RUNS]
        columns = ",\n    ".join(f"@{f.name} AS {f.name}" for f in schema.RUNS)
        sql = (
            f"MERGE {self.table_sql('runs')} AS T\n"
            f"USING (\n  SELECT\n    {columns}\n) AS S\n"
            f"ON FALSE\n"
            f"WHEN NOT MATCHED BY SOURCE AND T.run_id = @run_id THEN DELETE\n"
            f"WHEN NOT MATCHED BY TARGET THEN INSERT ROW"
        )
        digest = record_hash(self.project, self.dataset, "runs", parameters)
        self.run_job(query_configuration(sql, parameters), f"{JOB_PREFIX}_run_record_{digest}")

    # -- reads ------------------------------------------------------------------------------------

    def processed_uris(
        self, model_name: str, weights_id: str, *, exclude_run_id: str | None = None
    ) -> pa.Array:
        sql = (
            f"SELECT DISTINCT image_uri FROM {self.table_sql('results')}\n"
            "WHERE model_name = @model_name AND weights_id = @weights_id AND status = @ok\n"
            "  AND (@exclude_run_id IS NULL OR run_id != @exclude_run_id)"
        )
        table = self.query(
            sql,
            [
                query_parameter("model_name", "STRING", model_name),
                query_parameter("weights_id", "STRING", weights_id),
                query_parameter("ok", "STRING", schema.STATUS_OK),
                query_parameter("exclude_run_id", "STRING", exclude_run_id),
            ],
        )
        return table.column("image_uri").combine_chunks().cast(pa.string())

    def run_counts(self, run_id: str) -> dict[str, int]:
        sql = f"""SELECT
  COUNT(*) AS `rows`,
  COUNT(DISTINCT image_uri) AS distinct_uris,
  COUNT(*) - COUNT(DISTINCT image_uri) AS duplicate_uri_rows,
  COUNTIF(status = @ok) AS ok,
  COUNTIF(status = @error) AS failed,
  COUNTIF(status NOT IN (@ok, @error)) AS other_status,
  (SELECT COUNT(*) FROM {self.table_sql("shard_metrics")} WHERE run_id = @run_id) AS shard_metrics_rows,
  (SELECT IFNULL(SUM(images), 0) FROM {self.table_sql("shard_metrics")} WHERE run_id = @run_id)
    AS shard_metrics_images,
  (SELECT COUNT(*) FROM {self.table_sql("runs")} WHERE run_id = @run_id) AS run_records
FROM {self.table_sql("results")}
WHERE run_id = @run_id"""
        table = self.query(sql, self._run_params(run_id, ok=True, error=True))
        return {name: int(value or 0) for name, value in table.to_pylist()[0].items()}

    def _run_params(self, run_id: str, *, ok: bool = False, error: bool = False) -> list[dict]:
        params = [query_parameter("run_id", "STRING", run_id)]
        if ok:
            params.append(query_parameter("ok", "STRING", schema.STATUS_OK))
        if error:
            params.append(query_parameter("error", "STRING", schema.STATUS_ERROR))
        return params

    def run_record(self, run_id: str) -> dict | None:
        rows = self.query(
            f"SELECT * FROM {self.table_sql('runs')} WHERE run_id = @run_id", self._run_params(run_id)
        ).to_pylist()
        return rows[0] if rows else None

    def runs(self) -> list[dict]:
        return self.query(self._runs_sql(), []).to_pylist()

    def runs_frame(self) -> pd.DataFrame:
        return self.query_frame(self._runs_sql(), [])

    def _runs_sql(self) -> str:
        return f"SELECT * FROM {self.table_sql('runs')} ORDER BY run_date, recorded_at, run_id"

    def shard_metrics(self, run_id: str) -> pa.Table:
        return self.query(
            f"SELECT * FROM {self.table_sql('shard_metrics')} WHERE run_id = @run_id ORDER BY shard_index",
            self._run_params(run_id),
        )

    def detections_per_class(self, run_id: str) -> pa.Table:
        sql = f"""SELECT d.label_id AS label_id, ANY_VALUE(d.label) AS label, COUNT(*) AS detections,
  COUNT(DISTINCT r.image_uri) AS images
FROM {self.table_sql("results")} AS r, UNNEST(r.detections) AS d
WHERE r.run_id = @run_id
GROUP BY d.label_id
ORDER BY detections DESC, label_id"""
        return self.query(sql, self._run_params(run_id))

    def top_errors(self, run_id: str, limit: int = 10) -> pa.Table:
        sql = (
            f"SELECT error, COUNT(*) AS images FROM {self.table_sql('results')}\n"
            "WHERE run_id = @run_id AND status = @error\n"
            "GROUP BY error ORDER BY images DESC, error LIMIT @limit"
        )
        return self.query(
            sql, [*self._run_params(run_id, error=True), query_parameter("limit", "INT64", int(limit))]
        )

    def latency_quantiles(self, run_id: str) -> pa.Table:
        parts = [
            f"""SELECT '{stage}' AS stage, COUNT({column}) AS images,
  APPROX_QUANTILES({column}, 100)[SAFE_OFFSET(50)] AS p50_ms,
  APPROX_QUANTILES({column}, 100)[SAFE_OFFSET(95)] AS p95_ms,
  APPROX_QUANTILES({column}, 100)[SAFE_OFFSET(99)] AS p99_ms,
  MAX({column}) AS max_ms
FROM {self.table_sql("results")} WHERE run_id = @run_id AND status = @ok"""
            for stage, column in _LATENCY_STAGES
        ]
        return self.query("\nUNION ALL\n".join(parts) + "\nORDER BY stage", self._run_params(run_id, ok=True))


# Stage name -> results column; both are constants of this module, never user input.
_LATENCY_STAGES = (("decode", "decode_ms"), ("fetch", "fetch_ms"), ("infer", "infer_ms"))


def _inserted_rows(job: Any) -> int:
    """Rows the MERGE inserted, from its DML statistics (a MERGE reports inserted and deleted rows apart)."""
    stats = getattr(job, "dml_stats", None)
    return int(stats.inserted_row_count) if stats is not None else 0
