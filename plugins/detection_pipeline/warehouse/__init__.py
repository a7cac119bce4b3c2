"""The warehouse, chosen by URI: the embedded default's DuckDB file, or BigQuery in production.

    duckdb:///abs/path/warehouse.duckdb
    bigquery://project-id/dataset_name[?location=EU]

Both backends are imported lazily, so the embedded default never imports the Google provider.
"""

from __future__ import annotations

from detection_pipeline import uris
from detection_pipeline.warehouse.base import RUN_COUNT_KEYS, LoadStats, Warehouse, WarehouseError

__all__ = ["RUN_COUNT_KEYS", "LoadStats", "Warehouse", "WarehouseError", "open_warehouse"]


def open_warehouse(
    uri: str, *, gcp_conn_id: str = "google_cloud_default", lock_timeout_s: float | None = None
) -> Warehouse:
    """The warehouse named by `uri` (parsed by `uris.parse_warehouse`, the one grammar); ValueError with the
    reason when the URI is not one we accept.

    `lock_timeout_s` bounds how long a DuckDB call waits for another process's write (None: the class's
    default); BigQuery needs no lock.
    """
    parsed = uris.parse_warehouse(uri)
    if parsed.kind == "duckdb":
        from detection_pipeline.warehouse.duckdb_warehouse import DuckDBWarehouse

        if lock_timeout_s is None:
            return DuckDBWarehouse(parsed.path)
        return DuckDBWarehouse(parsed.path, lock_timeout_s=lock_timeout_s)
    from detection_pipeline.warehouse.bigquery_warehouse import BigQueryWarehouse

    return BigQueryWarehouse(
        parsed.project, parsed.dataset, location=parsed.location, gcp_conn_id=gcp_conn_id
    )
