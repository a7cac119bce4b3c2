"""Load figure: 10,000 tiny images through the whole DAG on the embedded default, nothing lost, memory bounded.

Generates a folder of tiny images of varied sizes (JPEG and PNG, 24-128 px a side), a few corrupt files that
fail in different ways, and byte-identical copies under other names; then runs the real DAG once with
`dag.test()` (folder listing, content dedup, 10 shards of 1,000, the engine as a local process per shard,
DuckDB) in a fresh process with a throwaway Airflow home, sampling the resident memory of the Airflow process
and of every engine process it starts.

Checked, or the script exits non-zero: one results row per unique input (rows == distinct URIs == files minus
copies), one error row per corrupt file, the run record's counts agree.

    .venv/bin/python bench/bench_load.py                          # 10,000 files; ~15 minutes on 2 busy cores
    .venv/bin/python bench/bench_load.py --images 500 --shard-size 100

Issue #7: the run completes with nothing lost and bounded memory; the figure goes in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    ImageSet,
    airflow_environment,
    machine_info,
    markdown_table,
    measure_dag_run,
    migrate_airflow_db,
    run_child,
    varied_sizes,
    write_images,
)

LOGICAL_DATE = datetime(2026, 11, 21, tzinfo=UTC)


def paths(workdir: Path) -> dict[str, Path]:
    return {
        "images": workdir / "images",
        "airflow": workdir / "airflow",
        "output": workdir / "output",
        "warehouse": workdir / "warehouse.duckdb",
    }


def child(payload_json: str, result_path: str) -> None:
    """The measured DAG run, in this fresh process (whose memory is the Airflow process's)."""
    payload = json.loads(payload_json)
    where = paths(Path(payload["workdir"]))
    airflow_environment(
        where["airflow"], input_uri=where["images"], output_uri=where["output"], warehouse=where["warehouse"]
    )
    result = measure_dag_run(payload["conf"], LOGICAL_DATE, where["warehouse"])
    Path(result_path).write_text(json.dumps(result, default=str))


def check(result: dict, images: ImageSet) -> list[str]:
    """What must hold for "nothing lost"; returns the failures."""
    counts, record = result["counts"], result["counts"]["record"]
    expected = images.unique_contents
    problems = []
    if not counts["rows"] == counts["distinct_uris"] == expected:
        problems.append(
            f"{counts['rows']} rows, {counts['distinct_uris']} distinct URIs, expected {expected}"
        )
    if counts["error_rows"] != len(images.corrupt):
        problems.append(f"{counts['error_rows']} error rows for {len(images.corrupt)} corrupt files")
    if counts["ok_rows"] != len(images.good):
        problems.append(f"{counts['ok_rows']} ok rows for {len(images.good)} good images")
    if record is None:
        problems.append("no run record")
    elif (record["listed"], record["duplicates"], record["processed"]) != (
        images.files,
        len(images.duplicates),
        expected,
    ):
        problems.append(f"run record {record} does not match the inputs")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--images", type=int, default=10_000, help="files in all, corrupt and copies included"
    )
    parser.add_argument("--corrupt", type=int, default=21)
    parser.add_argument("--duplicates", type=int, default=40)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--model", default="fasterrcnn_mobilenet_v3_large_320_fpn")
    parser.add_argument("--min-size", type=int, default=64)
    parser.add_argument("--max-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workdir", type=Path, default=None, help="inputs, Airflow home and outputs (temp)")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    parser.add_argument("--child", nargs=2, metavar=("PAYLOAD", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-load-"))
    where = paths(workdir)
    if where["images"].exists():
        raise SystemExit(
            f"{where['images']} exists; give a new --workdir (the check needs the inputs it wrote)"
        )
    print(f"workdir: {workdir}", file=sys.stderr)
    images = write_images(
        where["images"],
        args.images - args.corrupt - args.duplicates,
        varied_sizes(24, 128, count=16),
        corrupt=args.corrupt,
        duplicates=args.duplicates,
        png_every=7,
    )
    airflow_environment(
        where["airflow"], input_uri=where["images"], output_uri=where["output"], warehouse=where["warehouse"]
    )
    migrate_airflow_db()
    conf = {
        "input_uri": str(where["images"]),
        "output_uri": str(where["output"]),
        "warehouse": f"duckdb:///{where['warehouse']}",
        "model": args.model,
        "weights": "none",
        "min_size": args.min_size,
        "max_size": args.max_size,
        "batch_size": args.batch_size,
        "shard_size": args.shard_size,
        "dedup_mode": "content",
    }
    result = run_child(Path(__file__), {"workdir": str(workdir), "conf": conf}, workdir / "result.json")
    problems = check(result, images)
    report = {
        "machine": machine_info(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("child", "workdir", "out")},
        "inputs": {
            "files": images.files,
            "good": len(images.good),
            "corrupt": len(images.corrupt),
            "duplicates": len(images.duplicates),
        },
        "result": result,
        "problems": problems,
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(markdown(report))
    if problems:
        print("NOTHING-LOST CHECK FAILED: " + "; ".join(problems), file=sys.stderr)
        return 1
    return 0


def markdown(report: dict) -> str:
    m, s, inputs, r = report["machine"], report["settings"], report["inputs"], report["result"]
    b, counts, mem = r["breakdown"], r["counts"], r["memory"]
    engine = mem["engine_peak_mib"] or [0.0]
    head = (
        f"{m['date']}; {m['cpu']}, {m['memory_gb']} GiB; Python {m['python']}, torch {m['torch']}, "
        f"torchvision {m['torchvision']}, Airflow {m['apache-airflow']}. One run (it is long). "
        f"{inputs['files']:,} files (24-128 px JPEG/PNG; {inputs['corrupt']} corrupt, {inputs['duplicates']} "
        f"byte-identical copies), dedup_mode content, {counts['record']['shards']} shards of {s['shard_size']:,}, "
        f"{s['model']} (random weights), min_size {s['min_size']}, batch {s['batch_size']}. "
        f"1-minute load average {r['load_1min_before']} before, {r['load_1min_after']} after."
    )
    table = markdown_table(
        ["figure", "value"],
        [
            ["DAG wall time", f"{b['dag_wall_s']:.0f} s ({b['dag_wall_s'] / 60:.1f} min)"],
            ["images/s (unique inputs / DAG wall)", f"{counts['rows'] / b['dag_wall_s']:.1f}"],
            [
                "results rows / distinct URIs / unique inputs",
                f"{counts['rows']:,} / {counts['distinct_uris']:,} / {inputs['files'] - inputs['duplicates']:,}",
            ],
            [
                "ok / error rows",
                f"{counts['ok_rows']:,} / {counts['error_rows']} ({_codes(counts['error_codes'])})",
            ],
            ["duplicates dropped", f"{counts['record']['duplicates']}"],
            [
                "Airflow process RSS: start -> peak",
                f"{mem['airflow_process_start_mib']:.0f} -> {mem['airflow_process_peak_mib']:.0f} MiB",
            ],
            [
                f"engine process peak RSS ({mem['engine_processes']} shards): min / median / max",
                f"{min(engine):.0f} / {statistics.median(engine):.0f} / {max(engine):.0f} MiB "
                f"(ru_maxrss of children: {mem['children_maxrss_mib']:.0f} MiB)",
            ],
            ["whole process tree peak", f"{mem['tree_peak_mib']:.0f} MiB"],
            ["shards' model-busy time (sum)", f"{b['shard_sums']['infer_s']:.0f} s"],
            ["DAG wall vs detect tasks' wall", f"+{b['overhead_vs_shard_tasks']:.1%}"],
            ["nothing lost", "yes" if not report["problems"] else "NO: " + "; ".join(report["problems"])],
        ],
    )
    return f"{head}\n\n{table}"


def _codes(codes: dict) -> str:
    return ", ".join(f"{code} x{n}" for code, n in codes.items()) or "none"


if __name__ == "__main__":
    sys.exit(main())
