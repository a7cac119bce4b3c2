"""`make demo`: run the DAG end to end on the embedded default and print what it did.

Local files instead of GCS, the engine as a local process instead of a pod, DuckDB instead of BigQuery; the
same DAG and the same code path as production. Everything lands under var/ in the repository.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var"
IMAGES = VAR / "demo" / "images"
OUTPUT = VAR / "output"
WAREHOUSE = VAR / "warehouse.duckdb"


def _environment() -> dict[str, str]:
    """The embedded default's settings, set before Airflow is imported (it reads them at import)."""
    env = {
        "AIRFLOW_HOME": str(VAR / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "DETECTION_LAUNCHER": "local",
        "DETECTION_INPUT_URI": str(IMAGES),
        "DETECTION_OUTPUT_URI": str(OUTPUT),
        "DETECTION_WAREHOUSE": f"duckdb:///{WAREHOUSE}",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }
    for key, value in env.items():
        os.environ.setdefault(key, value)
    for path in (ROOT / "plugins", ROOT / "dags", ROOT / "inference_image", ROOT / "scripts"):
        sys.path.insert(0, str(path))
    return env


def _pretrained_weights_available(model: str) -> bool:
    """Whether torchvision's pretrained weights are cached or downloadable within a few seconds."""
    import urllib.request

    import torch
    from torchvision.models import get_model_weights

    url = get_model_weights(model).DEFAULT.url
    if (Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name).exists():
        return True
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=5).close()  # noqa: S310
        return True
    except OSError:
        return False


def _choose_weights(model: str, requested: str | None) -> str:
    if requested:
        return requested
    if _pretrained_weights_available(model):
        return "DEFAULT"
    print(
        f"demo: pretrained {model} weights cannot be downloaded here, so this demo runs with random weights "
        '(flagged in every row); for real ones: make demo ARGS="--weights /path/to/state_dict.pth".'
    )
    return "none"


def _migrate_db() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        sys.exit(f"demo: `airflow db migrate` failed:\n{result.stderr[-2000:]}")


def _load_dag():
    spec = importlib.util.spec_from_file_location(
        "object_detection_batch", ROOT / "dags" / "object_detection_batch.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


def _summary(run_id: str) -> None:
    from collections import Counter

    from detection_pipeline.warehouse import open_warehouse

    warehouse = open_warehouse(f"duckdb:///{WAREHOUSE}")
    row = warehouse.run_record(run_id)
    errors = Counter()
    for error in warehouse.top_errors(run_id, limit=1_000_000).to_pylist():
        errors[error["error"].split(":", 1)[0]] += error["images"]
    labels = [(c["label"], c["detections"]) for c in warehouse.detections_per_class(run_id).to_pylist()[:5]]
    lines = [
        ("run", row["run_id"]),
        (
            "model",
            f"{row['model_name']} ({row['weights_id']}{', random weights' if row['random_weights'] else ''})",
        ),
        ("images listed", row["listed"]),
        ("duplicates dropped", row["duplicates"]),
        ("processed", row["processed"]),
        ("ok / failed", f"{row['ok']} / {row['failed']}"),
        ("failure reasons", ", ".join(f"{reason} x{n}" for reason, n in errors.most_common()) or "none"),
        ("top labels", ", ".join(f"{label} x{n}" for label, n in labels) or "none"),
        ("throughput", f"{row['images_per_s'] or 0:.2f} images/s"),
        (
            "batch latency p50/p95",
            f"{row['batch_latency_p50_ms'] or 0:.0f} / {row['batch_latency_p95_ms'] or 0:.0f} ms",
        ),
        (
            "estimated cost",
            f"${row['estimated_cost_usd'] or 0:.4f} (${row['cost_per_1000_images_usd'] or 0:.4f} / 1,000 images)",
        ),
        (
            "versions",
            f"torch {row['torch_version']}, torchvision {row['torchvision_version']}, "
            f"airflow {row['airflow_version']}",
        ),
    ]
    width = max(len(k) for k, _ in lines)
    print("\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in lines))
    from detection_engine import layout

    prefix = layout.run_prefix(str(OUTPUT), run_id)
    print(f"\n  results    {prefix}/results/")
    print(f"  warehouse  {WAREHOUSE}  (tables: results, shard_metrics, runs)")
    print(f"  report     {layout.report_uri(prefix)}")
    print(f"  dashboard  {OUTPUT}/dashboard.html\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24, help="how many sample images to generate")
    parser.add_argument("--model", default="fasterrcnn_resnet50_fpn")
    parser.add_argument("--weights", default=os.environ.get("DETECTION_DEMO_WEIGHTS"))
    parser.add_argument(
        "--min-size", type=int, default=512, help="model input size (torchvision's default: 800)"
    )
    args = parser.parse_args()

    _environment()
    from sample_images import generate

    generate(IMAGES, count=args.images)
    weights = _choose_weights(args.model, args.weights)
    print(f"demo: {args.images + 2} sample images in {IMAGES}; setting up Airflow in {VAR / 'airflow'} ...")
    _migrate_db()
    conf = {
        "input_uri": str(IMAGES),
        "output_uri": str(OUTPUT),
        "warehouse": f"duckdb:///{WAREHOUSE}",
        "model": args.model,
        "weights": weights,
        "dedup_mode": "content",
        "min_size": args.min_size,
        "max_size": max(args.min_size, 1333 * args.min_size // 800),
        "shard_size": max(1, (args.images + 2) // 2),
    }
    print(f"demo: running the DAG with conf {json.dumps(conf)}")
    dag_run = _load_dag().test(run_conf=conf)
    state = str(getattr(dag_run.state, "value", dag_run.state))
    if state != "success":
        sys.exit(f"demo: the run ended '{state}'; the task logs above say why.")
    _summary(dag_run.run_id)


if __name__ == "__main__":
    main()
