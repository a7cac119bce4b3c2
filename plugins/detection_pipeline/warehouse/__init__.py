"""The warehouse, chosen by URI: the embedded default's DuckDB file, or BigQuery in production.

    duckdb:///abs/path/warehouse.duckdb
    bigquery://project-id/dataset_name[?location=EU]

Both backends are imported lazily, so the embedded default never imports the Google provider.
"""

from __future__ import annotations

import re

from detection_pipeline.warehouse.base import (
    DATASET_ID,
    LOCATION,
    PROJECT_ID,
    RUN_COUNT_KEYS,
    LoadStats,
    Warehouse,
    WarehouseError,
)

__all__ = ["RUN_COUNT_KEYS", "LoadStats", "Warehouse", "WarehouseError", "open_warehouse"]

_DUCKDB = re.compile(r"^duckdb://(?P<path>/[^?#\x00-\x1f]*[^/?#\x00-\x1f]\.duckdb)$")
_BIGQUERY = re.compile(
    r"^bigquery://(?P<project>[^/?#]*)/(?P<dataset>[^/?#]*)(?:\?location=(?P<location>[^&#]*))?$"
)

_EXPECTED = "expected duckdb:///absolute/path/file.duckdb or bigquery://project-id/dataset[?location=LOC]"


def open_warehouse(
    uri: str, *, gcp_conn_id: str = "google_cloud_default", lock_timeout_s: float | None = None
) -> Warehouse:
    """The warehouse named by `uri`; ValueError with the reason when the URI is not one we accept.

    `lock_timeout_s` bounds how long a DuckDB call waits for another process's write (None: the class's
    default); BigQuery needs no lock.
    """
    if not isinstance(uri, str) or not uri:
        raise ValueError(f"invalid warehouse URI {uri!r}: {_EXPECTED}")
    if uri.startswith("duckdb:"):
        match = _DUCKDB.match(uri)
        if not match:
            raise ValueError(
                f"invalid DuckDB warehouse URI {uri!r}: expected duckdb:/// followed by an absolute path "
                "ending in .duckdb (three slashes), with no query or fragment"
            )
        from detection_pipeline.warehouse.duckdb_warehouse import DuckDBWarehouse

        if lock_timeout_s is None:
            return DuckDBWarehouse(match["path"])
        return DuckDBWarehouse(match["path"], lock_timeout_s=lock_timeout_s)
    if uri.startswith("bigquery:"):
        match = _BIGQUERY.match(uri)
        if not match:
            raise ValueError(
                f"invalid BigQuery warehouse URI {uri!r}: expected bigquery://project-id/dataset"
            )
        project, dataset, location = match["project"], match["dataset"], match["location"]
        if not PROJECT_ID.match(project):
            raise ValueError(
                f"invalid BigQuery project id {project!r} in {uri!r}: 6-30 lowercase letters, digits or "
                "hyphens, starting with a letter"
            )
        if not DATASET_ID.match(dataset):
            raise ValueError(
                f"invalid BigQuery dataset {dataset!r} in {uri!r}: letters, digits and underscores only"
            )
        if location is not None and not LOCATION.match(location):
            raise ValueError(f"invalid BigQuery location {location!r} in {uri!r}: e.g. US, EU, europe-west4")
        from detection_pipeline.warehouse.bigquery_warehouse import BigQueryWarehouse

        return BigQueryWarehouse(project, dataset, location=location, gcp_conn_id=gcp_conn_id)
    raise ValueError(f"unsupported warehouse URI {uri!r}: {_EXPECTED}")
