"""Benchmark: build a run's manifest and plan its shards for 1M and 10M synthetic image URIs.

The input is a Parquet manifest of URIs (no real files) with 10% repeats, shuffled: build_manifest normalises,
deduplicates and sorts them and writes manifest.parquet; plan_shards writes one shard manifest per shard
(shard_size 10,000, max_shards 1,024: 90 shards for 1M, 900 for 10M). Each repetition runs in a fresh child
process, so its peak RSS (ru_maxrss, which sees Arrow's and DuckDB's native memory, unlike tracemalloc) is its
own; the child also reports its RSS right after imports, the part that is Airflow and library code.

    .venv/bin/python bench/bench_manifest.py                 # 1M and 10M, 3 repetitions each, median
    .venv/bin/python bench/bench_manifest.py --sizes 1000000 --repeat 1

Targets (issue #6): 10M URIs in <= 15 s and <= 2 GB peak RSS on the 2-core reference machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DUPLICATE_FRACTION = 0.10
SHARD_SIZE = 10_000
MAX_SHARDS = 1024


def generate(path: Path, count: int, seed: int = 0) -> None:
    """`count` URIs like gs://bench-images/camera-0042/2026-11-07/frame-0001234567.jpg, 10% of them repeats."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    unique = int(count * (1 - DUPLICATE_FRACTION))
    ids = np.concatenate([np.arange(unique), rng.integers(0, unique, count - unique)])
    rng.shuffle(ids)

    def padded(values, width: int) -> pa.Array:
        return pc.utf8_lpad(pa.array(values).cast(pa.string()), width, "0")

    uris = pc.binary_join_element_wise(
        "gs://bench-images/camera-",
        padded(ids % 1000, 4),
        "/2026-11-",
        padded(ids % 28 + 1, 2),
        "/frame-",
        padded(ids, 10),
        ".jpg",
        "",
    )
    pq.write_table(pa.table({"image_uri": uris}), path)


def child(input_uri: str, output_uri: str) -> None:
    """One measured run, in this (fresh) process; prints a JSON line."""
    for sub in ("plugins", "inference_image"):
        sys.path.insert(0, str(ROOT / sub))
    from detection_pipeline.config import RunConfig
    from detection_pipeline.manifest import build_manifest
    from detection_pipeline.sharding import plan_shards

    rss_after_imports = _rss_mb()
    config = RunConfig(
        input_uri=input_uri,
        output_uri=output_uri,
        warehouse=f"duckdb://{output_uri}/bench.duckdb",
        shard_size=SHARD_SIZE,
        max_shards=MAX_SHARDS,
    )
    run_prefix = f"{output_uri}/bench_run"
    cpu0, t0 = _cpu_s(), time.perf_counter()
    stats = build_manifest(config, run_prefix)
    t1 = time.perf_counter()
    specs = plan_shards(config, run_prefix, stats.manifest_uri)
    t2 = time.perf_counter()
    result = {
        "listed": stats.listed,
        "unique": stats.unique,
        "duplicates": stats.duplicates,
        "shards": len(specs),
        "build_s": t1 - t0,
        "plan_s": t2 - t1,
        "total_s": t2 - t0,
        "cpu_s": _cpu_s() - cpu0,
        "rss_after_imports_mb": rss_after_imports,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print(json.dumps(result))


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_once(input_path: Path, workdir: Path) -> dict:
    output = Path(tempfile.mkdtemp(dir=workdir, prefix="out-"))
    env = {
        **os.environ,
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(input_path), str(output)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["load_1min"] = os.getloadavg()[0]  # other work on the machine; the CPU figures are this run's own
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None, help="where inputs and outputs go (a temp dir)")
    parser.add_argument("--child", nargs=2, metavar=("INPUT", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-manifest-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"workdir: {workdir}")
    for size in args.sizes:
        input_path = workdir / f"uris-{size}.parquet"
        if not input_path.exists():
            generate(input_path, size)
        runs = [run_once(input_path, workdir) for _ in range(args.repeat)]
        for run in runs:
            print(f"  {size:>11,}  " + "  ".join(f"{k}={_fmt(v)}" for k, v in run.items()))
        median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(
            f"{size:,} URIs ({median['unique']:,.0f} unique, {median['shards']:.0f} shards), median of {len(runs)}: "
            f"total {median['total_s']:.2f} s (build {median['build_s']:.2f} s, plan {median['plan_s']:.2f} s), "
            f"cpu {median['cpu_s']:.1f} s, peak RSS {median['peak_rss_mb']:.0f} MiB "
            f"(after imports {median['rss_after_imports_mb']:.0f} MiB), load average {median['load_1min']:.1f}"
        )


def _fmt(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main()
