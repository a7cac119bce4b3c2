"""Airflow Assets: the warehouse tables a run writes, and the input a deployment may be scheduled on.

`load_results` declares the `results` and `shard_metrics` tables as outlets and `aggregate` the `runs` table,
so a downstream DAG with `schedule=[Asset(...)]` runs on fresh results or fresh run records. Each table's URI is
derived from the warehouse URI (`uris.parse_warehouse`, the one grammar):

- BigQuery: `bigquery://<project>/<dataset>/<table>`, the Google provider's own asset form (it checks it);
- DuckDB: `x-duckdb:///<absolute path>.duckdb/<table>`. Airflow has no DuckDB asset scheme; an `x-` scheme is
  its convention for custom ones and is kept exactly as written, where an unknown `duckdb://` would be
  rewritten (`duckdb:/path`), and the URI a downstream DAG names would not be the one shown here.

The outlets name the deployment's warehouse (DETECTION_WAREHOUSE): they are fixed when the DAG is parsed, so a
run whose conf names another warehouse still updates the deployment's tables' assets.

With DETECTION_INPUT_ASSET set, the batch DAG is scheduled on that Asset (an upstream DAG that lands the images
names it as an outlet) instead of DETECTION_SCHEDULE's cron.
"""

from __future__ import annotations

from airflow.sdk import Asset

from detection_pipeline import uris
from detection_pipeline.settings import Settings, SettingsError

# schema.TABLES' names, spelled out so that parsing the DAG does not import pyarrow (a test keeps them equal).
LOADED_TABLES = ("results", "shard_metrics")  # written by load_results
RECORD_TABLES = ("runs",)  # written by aggregate


def table_uri(warehouse_uri: str, table: str) -> str:
    """The asset URI of one warehouse table."""
    if table not in LOADED_TABLES + RECORD_TABLES:
        raise ValueError(
            f"unknown warehouse table {table!r}; tables: {', '.join(LOADED_TABLES + RECORD_TABLES)}"
        )
    parsed = uris.parse_warehouse(warehouse_uri)
    if parsed.kind == "bigquery":
        return f"bigquery://{parsed.project}/{parsed.dataset}/{table}"
    return f"x-duckdb://{parsed.path}/{table}"


def table_assets(warehouse_uri: str, tables: tuple[str, ...]) -> list[Asset]:
    """The Assets of `tables` in the warehouse at `warehouse_uri` (a task's outlets)."""
    return [Asset(table_uri(warehouse_uri, table)) for table in tables]


def batch_schedule(settings: Settings) -> Asset | str | None:
    """The batch DAG's schedule: the input Asset when DETECTION_INPUT_ASSET is set, else DETECTION_SCHEDULE."""
    if settings.input_asset is None:
        return settings.schedule
    try:
        return Asset(settings.input_asset)
    except ValueError as err:  # Airflow's own URI checks (reserved schemes, a provider's form)
        raise SettingsError(f"DETECTION_INPUT_ASSET: {err}") from None
