"""Split a run's manifest into shards, one pod each, and write each shard's own manifest.

Assignment is by position: the manifest is sorted by URI, and the image at position p of n goes to shard
floor(p * k / n) of k. So shards are contiguous runs of the sorted list, their sizes differ by at most one
(the slowest pod sets the run's wall time, so balance matters more than anything a hash could give), and a
URI's shard depends only on the sorted unique list and k: the same input always gives the same shards, which
is what lets a retried or re-run shard replace exactly its own files. Hash assignment would keep a URI's shard
when other URIs come and go, but k changes with n anyway, and hashed shards are only balanced on average.

k = ceil(n / shard_size), capped by the run's max_shards and by Airflow's `core.max_map_length` (a mapped
task cannot expand further); when capped, shards grow beyond shard_size rather than images being left out.
`build_manifest` writes the shard_index column with `shard_indices`; `plan_shards` only slices by it.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from detection_engine import layout, schema, storage
from detection_pipeline.config import RunConfig
from detection_pipeline.errors import PermanentError
from detection_pipeline.shard_size import DEFAULT_SHARD_SIZE

log = logging.getLogger(__name__)

_WRITERS = 8  # concurrent shard manifest writes (uploads, on gs://)
_SHARD_SCHEMA = schema.arrow_schema(schema.SHARD_MANIFEST)
# For manifests and shard manifests (sorted URI lists): no dictionary (every value is distinct), no statistics
# (nobody filters on them), LZ4 (2-3x faster to write than zstd, 3x larger: a 9M-URI manifest is ~55 MB, a
# 10k-URI shard ~60 kB).
URI_LIST_PARQUET = {"compression": "lz4", "use_dictionary": False, "write_statistics": False}
_SHARD_FILE = re.compile(r"/shard-(\d+)\.(?:parquet|json)$")
_SHARD_FOLDERS = ("shards", "results", "metrics")  # layout's per-shard files


class ShardingError(PermanentError, RuntimeError):
    """A manifest whose shard_index column cannot be the output of `shard_indices`."""


def max_map_length() -> int:
    """Airflow's cap on a mapped task's expansion (`[core] max_map_length`, 1024 unless configured)."""
    from airflow.configuration import conf

    return conf.getint("core", "max_map_length")


def shard_count(images: int, config: RunConfig) -> int:
    """How many shards `images` unique images make under the run's shard_size and caps (0 for none)."""
    if images <= 0:
        return 0
    # 'auto' is resolved from the warehouse before the manifest is built (shard_size.py); unresolved, it is
    # the default size.
    size = config.shard_size if isinstance(config.shard_size, int) else DEFAULT_SHARD_SIZE
    return min(math.ceil(images / size), config.max_shards, max_map_length())


def shard_indices(start: int, stop: int, images: int, shards: int) -> np.ndarray:
    """The shard of each sorted position in [start, stop) of `images`: floor(position * shards / images)."""
    return np.arange(start, stop, dtype=np.int64) * shards // images


def plan_shards(config: RunConfig, run_prefix: str, manifest_uri: str) -> list[dict]:
    """Write each shard's manifest (column image_uri) and return the shard specs for the launchers.

    A spec is `{"shard_index": i, "images": n, "manifest_uri": uri}`. An empty manifest gives no specs and
    no shard files. The shard manifests, results and metrics of an earlier attempt's shards that this plan
    does not have are removed, so a re-planned run (fewer shards) leaves only its own files: no reader can
    count an earlier attempt's images.
    """
    fs, path = storage.filesystem_for(manifest_uri)
    table = pq.read_table(pa.BufferReader(fs.cat_file(path)), columns=["image_uri", "shard_index"])
    boundaries = _boundaries(table.column("shard_index").to_numpy(), manifest_uri)
    cap = min(config.max_shards, max_map_length())
    if len(boundaries) - 1 > cap:
        raise ShardingError(
            f"{manifest_uri} has {len(boundaries) - 1} shards; this run allows at most {cap} "
            "(max_shards, core.max_map_length)"
        )
    uris = table.select(["image_uri"]).cast(_SHARD_SCHEMA)
    specs = []
    with ThreadPoolExecutor(_WRITERS) as pool:
        futures = []
        for index, (start, stop) in enumerate(itertools.pairwise(boundaries)):
            uri = layout.shard_manifest_uri(run_prefix, index)
            futures.append(pool.submit(_write_uri_list, uris.slice(start, stop - start), uri))
            specs.append({"shard_index": index, "images": int(stop - start), "manifest_uri": uri})
        for future in futures:
            future.result()
    _remove_stale_shards(run_prefix, len(specs))
    log.info("%d images in %d shards under %s", table.num_rows, len(specs), run_prefix)
    return specs


def _write_uri_list(table: pa.Table, uri: str) -> None:
    with storage.atomic_local_path(uri) as tmp:
        pq.write_table(table, tmp, **URI_LIST_PARQUET)


def _boundaries(shard_index: np.ndarray, manifest_uri: str) -> list[int]:
    """Row offsets where each shard starts, plus the end; checks the column is 0, 0, ..., 1, ..., k-1."""
    if len(shard_index) == 0:
        return [0]
    steps = np.diff(shard_index)
    if shard_index[0] != 0 or np.any((steps != 0) & (steps != 1)):
        raise ShardingError(
            f"{manifest_uri}: shard_index must start at 0 and rise by 0 or 1 from row to row "
            "(the manifest is sorted by URI and shards are contiguous)"
        )
    shards = int(shard_index[-1]) + 1
    return [*np.searchsorted(shard_index, np.arange(shards), side="left").tolist(), len(shard_index)]


def _remove_stale_shards(run_prefix: str, shards: int) -> None:
    """Remove every per-shard file (layout's shards/, results/, metrics/) of a shard index >= `shards`."""
    for folder in _SHARD_FOLDERS:
        fs, path = storage.filesystem_for(layout.join(run_prefix, folder))
        if not storage.is_local(fs):
            fs.invalidate_cache(path)  # the client is shared by the process: list what is there now
        try:
            names = fs.ls(path, detail=False)
        except FileNotFoundError:
            continue
        for name in names:
            match = _SHARD_FILE.search("/" + name)
            if match and int(match.group(1)) >= shards:
                fs.rm_file(name)
                log.info("removed %s, a file of an earlier attempt's shard this plan does not have", name)
