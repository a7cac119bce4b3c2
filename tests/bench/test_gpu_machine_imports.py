"""The GPU benchmark runs on a machine with torch, torchvision, Pillow, pyarrow, fsspec, psutil and pandas
only: bench_gpu.py (and what it imports: the engine, fitted_weights, box_map) must import without Airflow,
DuckDB, gcsfs or pycocotools."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ABSENT_ON_THE_GPU_MACHINE = ("airflow", "duckdb", "gcsfs", "pycocotools", "google.cloud", "hypothesis")


def test_bench_gpu_imports_without_what_the_gpu_machine_lacks():
    blocked = ", ".join(repr(name) for name in ABSENT_ON_THE_GPU_MACHINE)
    script = (
        "import sys\n"
        f"for name in ({blocked},):\n"
        "    sys.modules[name] = None  # import of it raises ImportError\n"
        f"sys.path.insert(0, {str(REPO / 'bench')!r})\n"
        "import bench_gpu, fitted_weights\n"
        "print('imported')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO, check=False
    )

    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("imported")
