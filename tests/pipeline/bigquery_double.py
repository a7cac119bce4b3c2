"""A BigQuery stand-in for tests: the Google provider's real BigQueryHook, its server side run on DuckDB.

No BigQuery emulator exists, so `DuckDBBigQueryHook` answers the hook methods the warehouse calls
(`insert_job`, `get_job`, `create_table`, `update_table`, `delete_table`) by doing what BigQuery would do,
on an in-memory DuckDB where each project is an attached database and each dataset a schema:

- every job configuration must survive a typed round trip through google-cloud-bigquery's own model
  (`LoadJobConfig` / `QueryJobConfig` properties, `SchemaField.from_api_repr`): an unknown key, a misspelt
  one or a value the client would mangle fails the test;
- every SQL statement is parsed as BigQuery SQL by sqlglot (strict errors), then transpiled to DuckDB and
  run with its named parameters bound, each cast to its declared BigQuery type;
- load jobs read the listed Parquet / newline-delimited JSON files into the destination with BigQuery's
  rules (explicit schema, write and create dispositions, unknown JSON keys refused, REQUIRED enforced);
- a job id sent twice answers 409 Conflict; a failed statement is a job whose `result()` raises what the
  client raises (BadRequest for an invalid query or ERROR()).

Where the two engines differ, the mapping is explicit and named where it happens:

- `INSERT ROW` (BigQuery: the source row, by position) becomes DuckDB's `INSERT BY POSITION`;
- `ERROR(msg)` runs as DuckDB's `error(msg)`; both abort the statement, nothing changes;
- partition pruning: DuckDB has no partitions, so the double enforces what pruning needs instead: a DELETE
  or a MERGE's NOT MATCHED BY SOURCE clause on a time-partitioned table must pin the partitioning column
  with an equality (`run_date = @run_date`); without it BigQuery scans, and may rewrite, every partition;
- job statistics: DuckDB's `RETURNING merge_action` gives the MERGE's inserted and deleted row counts that
  BigQuery reports in `dmlStats`.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

import duckdb
import fsspec
import pyarrow as pa
import sqlglot
from airflow.providers.google.cloud.hooks.bigquery import BigQueryHook
from google.api_core.exceptions import BadRequest, Conflict, NotFound
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery
from sqlglot import exp
from sqlglot.dialects.bigquery import BigQuery
from sqlglot.errors import ErrorLevel
from sqlglot.tokens import TokenType

from detection_engine import schema

# Legacy spellings the REST API also accepts, mapped onto schema.py's (standard SQL) type names.
_LEGACY_TYPES = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL", "STRUCT": "RECORD"}
# BigQuery query parameter type -> the DuckDB type each bound value is cast to.
PARAMETER_TYPES = {
    "STRING": "VARCHAR",
    "INT64": "BIGINT",
    "FLOAT64": "DOUBLE",
    "BOOL": "BOOLEAN",
    "DATE": "DATE",
    "TIMESTAMP": "TIMESTAMPTZ",
}


class UnprunedPartitionError(AssertionError):
    """A DML statement on a time-partitioned table that does not pin the partition: BigQuery scans them all."""


# -- checks against the client library's model and BigQuery's grammar ----------------------------


class NotBigQueryError(AssertionError):
    """SQL that sqlglot's lenient BigQuery reader accepts but BigQuery itself does not."""


# Tokens and constructs sqlglot reads in any dialect that BigQuery's grammar lacks.
_FOREIGN_TOKENS = {TokenType.DCOLON: "'::' casts", TokenType.PLACEHOLDER: "'?' parameters (we send NAMED)"}


def parse_bigquery(sql: str) -> exp.Expression:
    """One statement of BigQuery SQL, parsed strictly; ParseError or NotBigQueryError on anything else.

    sqlglot's reader is lenient (it accepts `$name`, `::`, `FILTER (WHERE ...)` under the BigQuery
    dialect), so the tokens and nodes BigQuery lacks are refused here too.
    """
    for token in BigQuery().tokenize(sql):
        if token.token_type in _FOREIGN_TOKENS:
            raise NotBigQueryError(f"BigQuery has no {_FOREIGN_TOKENS[token.token_type]}: {sql!r}")
        if token.token_type == TokenType.VAR and token.text.startswith("$"):
            raise NotBigQueryError(f"BigQuery parameters are @name, not {token.text}: {sql!r}")
    statements = sqlglot.parse(sql, read="bigquery", error_level=ErrorLevel.RAISE)
    if len(statements) != 1 or statements[0] is None:
        raise NotBigQueryError(f"expected exactly one statement, got {len(statements)}: {sql!r}")
    tree = statements[0]
    for node in tree.walk():
        if isinstance(node, exp.Filter):
            raise NotBigQueryError(f"BigQuery aggregates take no FILTER clause (use COUNTIF/IF): {sql!r}")
        if isinstance(node, exp.If) and node.args.get("false") is None:
            raise NotBigQueryError(f"BigQuery's IF takes three arguments: {node.sql('bigquery')}")
        if isinstance(node, exp.Insert) and isinstance(node.this, exp.Tuple):
            if not all(isinstance(column, exp.Column) for column in node.this.expressions):
                raise NotBigQueryError(f"not a BigQuery MERGE insert: {node.sql('bigquery')}")
    return tree


def _typed_copy(config_class: type, resource: dict) -> dict:
    """`resource` parsed by the client's config class, then rebuilt from its typed properties only."""
    parsed, fresh, default = config_class.from_api_repr(resource), config_class(), config_class()
    for name, prop in inspect.getmembers(config_class, lambda p: isinstance(p, property)):
        if prop.fset is None:
            continue
        value = getattr(parsed, name)
        if value != getattr(default, name):
            setattr(fresh, name, value)
    return fresh.to_api_repr()


def check_job_configuration(configuration: dict) -> None:
    """Raise AssertionError unless the client library's model reproduces `configuration` key for key."""
    (kind,) = configuration.keys()
    body = dict(configuration[kind])
    if kind == "load":
        bigquery.TableReference.from_api_repr(body.pop("destinationTable"))
        uris = body.pop("sourceUris")
        assert isinstance(uris, list) and all(isinstance(u, str) for u in uris), uris
        rebuilt = _typed_copy(bigquery.LoadJobConfig, {"load": body})
    elif kind == "query":
        assert isinstance(body.pop("query"), str)
        rebuilt = _typed_copy(bigquery.QueryJobConfig, {"query": body})
    else:
        raise AssertionError(f"unexpected job kind {kind!r}")
    assert rebuilt == {kind: body}, f"the client's model does not round-trip this {kind} configuration"
    for field in body.get("schema", {}).get("fields", []):
        check_schema_field(field)


def _typed_field(field: dict) -> bigquery.SchemaField:
    """`field` parsed by the client, then rebuilt from its typed attributes only (unknown keys drop out)."""
    parsed = bigquery.SchemaField.from_api_repr(field)
    kwargs: dict[str, Any] = {
        "mode": parsed.mode,
        "fields": [_typed_field(f.to_api_repr()) for f in parsed.fields],
    }
    if parsed.description is not None:
        kwargs["description"] = parsed.description
    return bigquery.SchemaField(parsed.name, parsed.field_type, **kwargs)


def check_schema_field(field: dict) -> None:
    """Raise AssertionError unless SchemaField reproduces `field` from its typed attributes, key for key."""
    rebuilt = _typed_field(field).to_api_repr()
    assert rebuilt == field, f"SchemaField does not round-trip {field} (got {rebuilt})"


def fields_from_api(fields: list[dict]) -> tuple[schema.Field, ...]:
    """A BigQuery JSON schema as schema.py Fields, so the double's tables are made by schema.duckdb_columns."""
    out = []
    for f in fields:
        check_schema_field(f)
        type_ = _LEGACY_TYPES.get(f["type"], f["type"])
        sub = fields_from_api(f.get("fields", []))
        out.append(schema.Field(f["name"], type_, f.get("mode", "NULLABLE"), f.get("description", ""), sub))
    return tuple(out)


# -- the hook --------------------------------------------------------------------------------------


class DuckDBBigQueryHook(BigQueryHook):
    """BigQueryHook whose server is DuckDB; every call is checked against the real method's signature."""

    def __init__(self, project: str, location: str = "US") -> None:
        super().__init__(gcp_conn_id="google_cloud_default", use_legacy_sql=False, location=location)
        self.client = bigquery.Client(project=project, credentials=AnonymousCredentials(), location=location)
        self.client._connection.api_request = self._no_network
        self.con = duckdb.connect()
        self.con.execute("SET TimeZone = 'UTC'")
        self.con.register_filesystem(fsspec.filesystem("gs"))
        self.jobs: dict[str, Any] = {}
        self.tables: dict[str, dict] = {}  # "project.dataset.table" -> table resource (schema, partitioning)
        self.statements: list[str] = []  # every SQL statement received, as sent
        self.calls: list[str] = []

    @staticmethod
    def _no_network(*args, **kwargs):
        raise AssertionError(f"a test reached for the BigQuery API: {args} {kwargs}")

    def _check_call(self, name: str, kwargs: dict) -> None:
        inspect.signature(getattr(BigQueryHook, name)).bind(self, **kwargs)  # raises on a wrong keyword
        self.calls.append(name)

    # -- names -------------------------------------------------------------------------------------

    def _ensure_dataset(self, project: str, dataset: str) -> None:
        attached = {
            row[0] for row in self.con.execute("SELECT database_name FROM duckdb_databases()").fetchall()
        }
        if project not in attached:
            self.con.execute(f"ATTACH ':memory:' AS \"{project}\"")
        self.con.execute(f'CREATE SCHEMA IF NOT EXISTS "{project}"."{dataset}"')

    @staticmethod
    def _sql_name(full: str) -> str:
        return ".".join(f'"{part}"' for part in full.split("."))

    @staticmethod
    def _full(ref: dict) -> str:
        return f"{ref['projectId']}.{ref['datasetId']}.{ref['tableId']}"

    def _create(self, full: str, fields: tuple[schema.Field, ...], resource: dict, *, replace: bool) -> None:
        project, dataset, _ = full.split(".")
        self._ensure_dataset(project, dataset)
        verb = "CREATE OR REPLACE TABLE" if replace else "CREATE TABLE"
        self.con.execute(f"{verb} {self._sql_name(full)} (\n  {schema.duckdb_columns(fields)}\n)")
        self.tables[full] = resource

    def rows(self, table: str, where: str = "TRUE", params: dict | None = None) -> list[dict]:
        """Every row of a table of the default project's dataset (for assertions), as DuckDB reads it."""
        (full,) = [name for name in self.tables if name.endswith(f".{table}")]
        sql = f"SELECT * FROM {self._sql_name(full)} WHERE {where}"
        return self.con.sql(sql, params=params or {}).to_arrow_table().to_pylist()

    # -- tables ------------------------------------------------------------------------------------

    def create_table(self, **kwargs):
        self._check_call("create_table", kwargs)
        resource = kwargs["table_resource"]
        bigquery.Table.from_api_repr(resource)  # what the hook does with it before sending
        full = self._full(resource["tableReference"])
        if full in self.tables:
            if not kwargs.get("exists_ok", True):
                raise Conflict(f"Already Exists: Table {full}")
        else:
            self._create(full, fields_from_api(resource["schema"]["fields"]), resource, replace=False)
        return bigquery.Table.from_api_repr(self.tables[full])

    def update_table(self, **kwargs):
        """A schema patch with BigQuery's rules: existing columns kept as they are, new ones appended NULLABLE."""
        self._check_call("update_table", kwargs)
        assert kwargs.get("fields") == ["schema"], "only schema updates are emulated"
        full = f"{kwargs['project_id']}.{kwargs['dataset_id']}.{kwargs['table_id']}"
        resource = self.tables[full]
        old, new = resource["schema"]["fields"], kwargs["table_resource"]["schema"]["fields"]
        if new[: len(old)] != old or any(f.get("mode", "NULLABLE") == "REQUIRED" for f in new[len(old) :]):
            raise BadRequest(
                f"Provided Schema does not match Table {full}: fields may only be appended, NULLABLE"
            )
        for field in fields_from_api(new[len(old) :]):
            self.con.execute(
                f"ALTER TABLE {self._sql_name(full)} ADD COLUMN {schema.duckdb_columns((field,))}"
            )
        resource["schema"] = {"fields": new}
        return bigquery.Table.from_api_repr(resource).to_api_repr()

    def table_exists(self, **kwargs):
        self._check_call("table_exists", kwargs)
        return f"{kwargs['project_id']}.{kwargs['dataset_id']}.{kwargs['table_id']}" in self.tables

    def delete_table(self, **kwargs):
        self._check_call("delete_table", kwargs)
        full = kwargs["table_id"]
        if full not in self.tables:
            if not kwargs.get("not_found_ok", True):
                raise NotFound(f"Not found: Table {full}")
            return
        self.con.execute(f"DROP TABLE {self._sql_name(full)}")
        del self.tables[full]

    # -- jobs --------------------------------------------------------------------------------------

    def get_job(self, **kwargs):
        self._check_call("get_job", kwargs)
        if kwargs["job_id"] not in self.jobs:
            raise NotFound(f"Not found: Job {kwargs['job_id']}")
        return self.jobs[kwargs["job_id"]]

    def insert_job(self, **kwargs):
        self._check_call("insert_job", kwargs)
        job_id, configuration = kwargs["job_id"], kwargs["configuration"]
        if job_id in self.jobs:
            raise Conflict(f"Already Exists: Job {kwargs['project_id']}:{kwargs['location']}.{job_id}")
        check_job_configuration(configuration)
        resource = {
            "jobReference": {
                "jobId": job_id,
                "projectId": kwargs["project_id"],
                "location": kwargs["location"],
            },
            "configuration": configuration,
            "status": {"state": "DONE"},
        }
        result: pa.Table | None = None
        try:
            if "query" in configuration:
                result, resource["statistics"] = self._query(configuration["query"])
            else:
                resource["statistics"] = self._load(configuration["load"])
        except (duckdb.Error, BigQueryJobError) as exc:
            resource["status"]["errorResult"] = getattr(
                exc, "error", {"reason": "invalidQuery", "message": str(exc)}
            )
        job_class = bigquery.QueryJob if "query" in configuration else bigquery.LoadJob
        job = job_class.from_api_repr(resource, self.client)
        if result is not None:
            job.to_arrow = lambda **_: result
            job.to_dataframe = lambda **_: to_dataframe(result)
        self.jobs[job_id] = job
        if job.error_result:
            job.result()  # raises what the hook's own job.result() raises for a failed job
        return job

    def _query(self, query: dict) -> tuple[pa.Table | None, dict]:
        sql = query["query"]
        self.statements.append(sql)
        assert query.get("useLegacySql") is False, "queries must be standard SQL"
        tree = parse_bigquery(sql)
        declared = {
            p["name"]: bigquery.ScalarQueryParameter.from_api_repr(p)
            for p in query.get("queryParameters", [])
        }
        values: dict[str, Any] = {}
        for node in list(tree.find_all(exp.Parameter)):
            name = node.name
            if name not in declared:
                raise BigQueryJobError("invalidQuery", f"Query parameter '{name}' not found")
            values[name] = declared[name].value
            node.replace(exp.cast(node.copy(), PARAMETER_TYPES[declared[name].type_], dialect="duckdb"))
        if isinstance(tree, exp.Merge | exp.Delete):
            self._check_prunes(tree)
        for insert in tree.find_all(exp.Insert):
            if isinstance(insert.this, exp.Var) and insert.this.name.upper() == "ROW":
                # BigQuery's INSERT ROW inserts the source row by position: DuckDB's INSERT BY POSITION.
                insert.replace(exp.var("INSERT BY POSITION"))
        duck = tree.sql("duckdb")
        if isinstance(tree, exp.Merge):
            actions = [
                row[0] for row in self.con.execute(f"{duck} RETURNING merge_action", values).fetchall()
            ]
            stats = {
                "insertedRowCount": str(actions.count("INSERT")),
                "deletedRowCount": str(actions.count("DELETE")),
                "updatedRowCount": str(actions.count("UPDATE")),
            }
            return None, {"query": {"statementType": "MERGE", "dmlStats": stats}}
        if isinstance(tree, exp.Delete):
            deleted = len(self.con.execute(f"{duck} RETURNING 1", values).fetchall())
            return None, {"query": {"statementType": "DELETE", "dmlStats": {"deletedRowCount": str(deleted)}}}
        if isinstance(tree, exp.Query):
            return self.con.sql(duck, params=values).to_arrow_table(), {"query": {"statementType": "SELECT"}}
        raise AssertionError(f"the double does not run {type(tree).__name__} statements: {sql!r}")

    def _check_prunes(self, tree: exp.Merge | exp.Delete) -> None:
        """The partition pruning contract: DML on a partitioned table pins the partitioning column."""
        target = tree.this
        full = ".".join(part.name for part in (target.args["catalog"], target.args["db"], target.this))
        partitioning = self.tables.get(full, {}).get("timePartitioning")
        if not partitioning:
            return
        column = partitioning["field"]
        if isinstance(tree, exp.Delete):
            predicates = [tree.args["where"].this] if tree.args.get("where") else []
        else:
            predicates = [
                when.args.get("condition")
                for when in tree.args["whens"].expressions
                if when.args.get("source") and not when.args.get("matched")
            ]
        for predicate in predicates:
            if not any(_pins(term, column) for term in _conjuncts(predicate)):
                raise UnprunedPartitionError(
                    f"{type(tree).__name__} on {full} (partitioned by {column}) does not pin {column} with an "
                    f"equality: BigQuery would scan every partition. Statement: {tree.sql('bigquery')}"
                )

    # -- loads -------------------------------------------------------------------------------------

    def _load(self, load: dict) -> dict:
        full, uris = self._full(load["destinationTable"]), load["sourceUris"]
        exists = full in self.tables
        if not exists and load.get("createDisposition", "CREATE_IF_NEEDED") == "CREATE_NEVER":
            raise BigQueryJobError("notFound", f"Not found: Table {full}")
        if "schema" not in load and not exists:
            raise BigQueryJobError("invalid", f"a load into the new table {full} needs a schema")
        api_fields = load["schema"]["fields"] if "schema" in load else self.tables[full]["schema"]["fields"]
        fields = fields_from_api(api_fields)
        source_format = load.get("sourceFormat", "CSV")
        if source_format == "PARQUET":
            repeated = [f.name for f in fields if f.mode == "REPEATED"]
            if repeated and not load.get("parquetOptions", {}).get("enableListInference"):
                # Without list inference BigQuery reads a Parquet LIST as a record of list.element: it no
                # longer matches a REPEATED column of the given schema.
                raise BigQueryJobError("invalid", f"Parquet LIST columns {repeated} need enableListInference")
        elif source_format == "NEWLINE_DELIMITED_JSON":
            self._check_json(uris, fields, load)
        else:
            raise AssertionError(f"the double does not load {source_format}")
        disposition = load.get("writeDisposition", "WRITE_APPEND")
        resource = {**self.tables.get(full, {}), "tableReference": load["destinationTable"]}
        resource["schema"] = {"fields": api_fields}
        before = self.tables.get(full)
        self.con.execute("BEGIN TRANSACTION")
        try:
            if disposition == "WRITE_TRUNCATE" or not exists:
                self._create(full, fields, resource, replace=True)
            elif disposition == "WRITE_EMPTY" and self.rows(full.rsplit(".", 1)[1]):
                raise BigQueryJobError("duplicate", f"Table {full} is not empty")
            rows = self._insert_files(full, source_format, uris)
            self.con.execute("COMMIT")
        except BaseException:  # a failed load job changes nothing, the table's metadata included
            self.con.execute("ROLLBACK")
            if before is None:
                self.tables.pop(full, None)
            else:
                self.tables[full] = before
            raise
        return {"load": {"inputFiles": str(len(uris)), "outputRows": str(rows)}}

    def _insert_files(self, full: str, source_format: str, uris: list[str]) -> int:
        """Insert the files' rows by column name; REQUIRED columns are NOT NULL, so a missing value fails."""
        if source_format == "PARQUET":
            relation, params = "read_parquet($files, union_by_name = false)", {"files": uris}
        else:  # JSON values typed by the destination's columns, as BigQuery parses them against its schema
            catalog, dataset, table = full.split(".")
            types = self.con.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_catalog = $c"
                " AND table_schema = $d AND table_name = $t ORDER BY ordinal_position",
                {"c": catalog, "d": dataset, "t": table},
            ).fetchall()
            relation = "read_json($files, format = 'newline_delimited', columns = $columns)"
            params = {"files": uris, "columns": dict(types)}
        sql = f"INSERT INTO {self._sql_name(full)} BY NAME SELECT * FROM {relation}"
        (rows,) = self.con.execute(sql, params).fetchone()
        return rows

    @staticmethod
    def _check_json(uris: list[str], fields: tuple[schema.Field, ...], load: dict) -> None:
        """Newline-delimited objects only; a key the schema lacks fails unless ignoreUnknownValues."""
        names = set(schema.column_names(fields))
        bad = 0
        for uri in uris:
            with fsspec.open(uri, "r") as f:
                for number, line in enumerate(f, 1):
                    try:
                        row = json.loads(line)
                        unknown = [] if load.get("ignoreUnknownValues") else sorted(row.keys() - names)
                    except (ValueError, AttributeError):
                        unknown = None
                    if unknown is None or unknown:
                        bad += 1
                        if bad > int(load.get("maxBadRecords", 0)):
                            what = "not one JSON object" if unknown is None else f"no such field(s) {unknown}"
                            raise BigQueryJobError(
                                "invalid", f"Error while reading data: {uri} line {number}: {what}"
                            )


def to_dataframe(result: pa.Table):
    """What `QueryJob.to_dataframe()` makes of a result: Arrow to pandas through the client's own type mapper,
    with the client's default dtypes (nullable boolean and Int64, db-dtypes' dbdate)."""
    import db_dtypes
    import pandas as pd
    from google.cloud.bigquery import _pandas_helpers

    mapper = _pandas_helpers.default_types_mapper(
        bool_dtype=pd.BooleanDtype(), int_dtype=pd.Int64Dtype(), date_dtype=db_dtypes.DateDtype()
    )
    return result.to_pandas(integer_object_nulls=True, types_mapper=mapper)


class BigQueryJobError(Exception):
    """A job the double fails, with BigQuery's errorResult (the client maps its reason to an exception)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.error = {"reason": reason, "message": message}


def _conjuncts(node: exp.Expression | None):
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.And):
        yield from _conjuncts(node.left)
        yield from _conjuncts(node.right)
    elif node is not None:
        yield node


def _pins(term: exp.Expression, column: str) -> bool:
    """`term` is `<column> = <parameter or literal>` (either side), possibly cast."""
    if not isinstance(term, exp.EQ):
        return False
    sides = [term.this, term.expression]
    sides = [s.this if isinstance(s, exp.Cast) else s for s in sides]
    return any(isinstance(s, exp.Column) and s.name == column for s in sides) and any(
        isinstance(s, exp.Parameter | exp.Literal) for s in sides
    )
