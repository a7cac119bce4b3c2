"""What the pipeline, load and GPU benchmarks share: the machine they ran on, a throwaway Airflow for
`dag.test()`, generated input images, and the peak memory of a process and the engine processes it starts.

Nothing here imports Airflow or torch at module level: Airflow reads its configuration when first imported
(so `airflow_environment` must run before), and the load benchmark measures the Airflow process's memory, which
torch would inflate.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DAG_FILE = ROOT / "dags" / "object_detection_batch.py"
DAG_ID = "object_detection_batch"


def add_source_paths() -> None:
    """The repository's packages importable without installing them (as pyproject does for pytest)."""
    for sub in ("inference_image", "plugins", "dags"):
        path = str(ROOT / sub)
        if path not in sys.path:
            sys.path.insert(0, path)


# -- the machine ----------------------------------------------------------------------------------


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> float:
    """1-minute load average: how much else was running on the (shared) machine."""
    return round(os.getloadavg()[0], 2)


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    """Machine and library versions, read without importing torch or Airflow."""
    return {
        "date": datetime.now(UTC).date().isoformat(),
        "cpu": f"{cpu_name()} x{os.cpu_count()}",
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        **{
            name: package_version(name)
            for name in ("torch", "torchvision", "apache-airflow", "duckdb", "pyarrow", "pillow")
        },
    }


# -- a throwaway Airflow ---------------------------------------------------------------------------


def airflow_environment(home: Path, *, input_uri: Path, output_uri: Path, warehouse: Path) -> None:
    """Point Airflow and the DAG's deployment settings at `home`; must run before Airflow is imported.

    Like tests/airflow_env.py: a fresh SQLite metadata DB, no examples, this repository's dags/,
    the embedded default (local launcher, local files, DuckDB), and no DETECTION_* setting from the caller's
    shell. Task logs at WARNING, so a long run does not print every engine progress line.
    """
    if "airflow" in sys.modules:
        raise RuntimeError("airflow_environment() must run before Airflow is imported")
    home.mkdir(parents=True, exist_ok=True)
    for key in [k for k in os.environ if k.startswith("DETECTION_")]:
        del os.environ[key]
    os.environ.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            "DETECTION_LAUNCHER": "local",
            "DETECTION_SCHEDULE": "none",
            "DETECTION_INPUT_URI": str(input_uri),
            "DETECTION_OUTPUT_URI": str(output_uri),
            "DETECTION_WAREHOUSE": f"duckdb:///{warehouse}",
        }
    )
    add_source_paths()


def migrate_airflow_db() -> None:
    """`airflow db migrate` in a child process, as the demo and the e2e tests do."""
    done = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"`airflow db migrate` failed:\n{done.stderr[-3000:]}")


def load_dag():
    """The batch DAG, parsed from its file under the environment set above."""
    spec = importlib.util.spec_from_file_location(DAG_ID, DAG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


@dataclass(frozen=True)
class TaskTiming:
    task_id: str
    map_index: int
    state: str
    start: datetime
    end: datetime

    @property
    def duration_s(self) -> float:
        return (self.end - self.start).total_seconds()


def task_timings(run_id: str) -> list[TaskTiming]:
    """Start and end of every task instance of the run, from the metadata DB, in start order."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (
            session.query(TaskInstance)
            .filter(TaskInstance.dag_id == DAG_ID, TaskInstance.run_id == run_id)
            .all()
        )
        timings = [
            TaskTiming(ti.task_id, ti.map_index, str(ti.state), ti.start_date, ti.end_date)
            for ti in rows
            if ti.start_date is not None and ti.end_date is not None
        ]
    return sorted(timings, key=lambda t: t.start)


def run_dag(dag, conf: dict, logical_date: datetime) -> dict:
    """One `dag.test()` run; its wall time as the caller waits for it, its state and run id.

    `dag.test()` runs every task in this process, one at a time (mapped shards too, so their times add up), with
    a minimal scheduling loop between them; the engine runs as a child process per shard.
    """
    started = time.perf_counter()
    dag_run = dag.test(logical_date=logical_date, run_after=logical_date, run_conf=conf)
    wall_s = time.perf_counter() - started
    state = str(getattr(dag_run.state, "value", dag_run.state))
    return {"run_id": dag_run.run_id, "state": state, "dag_wall_s": wall_s}


def read_shard_metrics(run_prefix: str) -> list[dict]:
    """Every metrics/shard-*.json the run's shards wrote (local runs only), by shard index."""
    folder = Path(run_prefix) / "metrics"
    metrics = [json.loads(p.read_text()) for p in sorted(folder.glob("shard-*.json"))]
    return sorted(metrics, key=lambda m: m["shard_index"])


def result_counts(warehouse: Path, run_id: str) -> dict:
    """What the warehouse holds for the run: rows, distinct URIs, ok/error rows, and its run record's counts."""
    import duckdb

    with duckdb.connect(str(warehouse), read_only=True) as con:
        rows, distinct, ok, failed = con.execute(
            "SELECT count(*), count(DISTINCT image_uri), count(*) FILTER (status = 'ok'), "
            "count(*) FILTER (status = 'error') FROM results WHERE run_id = ?",
            [run_id],
        ).fetchone()
        record = con.execute(
            "SELECT listed, duplicates, processed, ok, failed, shards, images_per_s FROM runs WHERE run_id = ?",
            [run_id],
        ).fetchone()
        errors = dict(
            con.execute(
                "SELECT split_part(error, ':', 1), count(*) FROM results "
                "WHERE run_id = ? AND status = 'error' GROUP BY 1 ORDER BY 1",
                [run_id],
            ).fetchall()
        )
    keys = ("listed", "duplicates", "processed", "ok", "failed", "shards", "images_per_s")
    return {
        "rows": rows,
        "distinct_uris": distinct,
        "ok_rows": ok,
        "error_rows": failed,
        "error_codes": errors,
        "record": dict(zip(keys, record, strict=True)) if record else None,
    }


def time_breakdown(dag_wall_s: float, timings: list[TaskTiming], metrics: list[dict]) -> dict:
    """Where the DAG run's wall time went: each task, the gaps between tasks, and inside each detect task.

    Inside a detect task (shard), from the task's start: `startup_s` (the operator starts a Python process,
    which imports torch, torchvision, pyarrow and fsspec) until the engine's `started_at`; then the engine's
    `wall_s` = manifest read + `model_load_s` + the data path, of which `infer_s` is the model busy and the rest
    fetch/decode the model waited for; then `finish_s` (the results Parquet and metrics written, the process
    exits, the operator reads the summary) until the task ends.
    """
    detect = [t for t in timings if t.task_id == "detect"]
    by_task: dict[str, float] = {}
    for t in timings:
        by_task[t.task_id] = by_task.get(t.task_id, 0.0) + t.duration_s
    shards = []
    for m in metrics:
        started = datetime.fromisoformat(m["started_at"])
        finished = datetime.fromisoformat(m["finished_at"])
        task = next((t for t in detect if t.start <= started and finished <= t.end), None)
        shards.append(
            {
                "shard_index": m["shard_index"],
                "images": m["images"],
                "task_s": task.duration_s if task else None,
                "startup_s": (started - task.start).total_seconds() if task else None,
                "engine_wall_s": m["wall_s"],
                "model_load_s": m["model_load_s"],
                "infer_s": m["infer_s"],
                "not_overlapped_s": m["wall_s"] - m["model_load_s"] - m["infer_s"],
                "finish_s": (task.end - finished).total_seconds() if task else None,
            }
        )
    sums = {
        key: sum(s[key] or 0.0 for s in shards)
        for key in (
            "task_s",
            "startup_s",
            "engine_wall_s",
            "model_load_s",
            "infer_s",
            "not_overlapped_s",
            "finish_s",
        )
    }
    tasks_s = sum(t.duration_s for t in timings)
    return {
        "dag_wall_s": dag_wall_s,
        "tasks_s": by_task,
        "between_tasks_s": dag_wall_s - tasks_s,  # dag.test's loop: scheduling, state updates, XCom
        "shards": shards,
        "shard_sums": sums,
        "overhead_vs_shard_tasks": dag_wall_s / sums["task_s"] - 1 if sums["task_s"] else None,
        "overhead_vs_engine_wall": dag_wall_s / sums["engine_wall_s"] - 1 if sums["engine_wall_s"] else None,
        "overhead_vs_model_busy": dag_wall_s / sums["infer_s"] - 1 if sums["infer_s"] else None,
    }


def measure_dag_run(conf: dict, logical_date: datetime, warehouse: Path) -> dict:
    """Parse the DAG, run it once with `conf` under memory sampling, and collect everything the benchmarks
    report: wall time and its breakdown, shard metrics, warehouse counts, peak memory. Fails if the run fails.
    Call `airflow_environment` first; the benchmarks run this in a fresh process (`run_child`)."""
    from detection_engine import layout

    started = time.perf_counter()
    dag = load_dag()
    parse_s = time.perf_counter() - started
    load_before = load_average()
    with TreeMemory(interval_s=0.25) as memory:
        run = run_dag(dag, conf, logical_date)
    if run["state"] != "success":
        raise SystemExit(f"the DAG run {run['run_id']} ended {run['state']!r}; its task logs say why")
    metrics = read_shard_metrics(layout.run_prefix(conf["output_uri"], run["run_id"]))
    engine_peaks = memory.engine_peaks()
    return {
        **run,
        "parse_s": parse_s,
        "load_1min_before": load_before,
        "load_1min_after": load_average(),
        "breakdown": time_breakdown(run["dag_wall_s"], task_timings(run["run_id"]), metrics),
        "counts": result_counts(warehouse, run["run_id"]),
        "memory": {
            "airflow_process_start_mib": mib(memory.root_start),
            "airflow_process_peak_mib": mib(memory.root_peak),
            "engine_processes": len(engine_peaks),
            "engine_peak_mib": [mib(p) for p in engine_peaks],
            "engine_peak_max_mib": mib(max(engine_peaks, default=0)),
            "children_maxrss_mib": mib(TreeMemory.children_maxrss()),
            "tree_peak_mib": mib(memory.tree_peak),
            "samples": memory.samples,
        },
    }


def run_child(script: Path, payload: dict, result_path: Path) -> dict:
    """Run `script --child PAYLOAD_JSON RESULT_PATH` in a fresh interpreter and return the JSON it wrote."""
    result_path.unlink(missing_ok=True)
    done = subprocess.run(
        [sys.executable, str(script), "--child", json.dumps(payload), str(result_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 or not result_path.exists():
        raise SystemExit(f"{script.name} child failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(result_path.read_text())


# -- inputs ----------------------------------------------------------------------------------------


@dataclass
class ImageSet:
    """What was written, so a benchmark can check the run against it."""

    directory: Path
    good: list[Path] = field(default_factory=list)  # distinct, decodable images
    corrupt: list[Path] = field(default_factory=list)  # distinct bytes that decode to nothing (error rows)
    duplicates: list[Path] = field(default_factory=list)  # byte-identical copies of good images

    @property
    def files(self) -> int:
        return len(self.good) + len(self.corrupt) + len(self.duplicates)

    @property
    def unique_contents(self) -> int:
        return len(self.good) + len(self.corrupt)


# Photo-sized (width, height) in the aspect ratios cameras and datasets use: 4:3 and 16:9, both ways.
PHOTO_SHAPES = [
    (640, 480),
    (480, 640),
    (800, 600),
    (1024, 576),
    (600, 800),
    (576, 1024),
    (720, 540),
    (540, 720),
]


def picture(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A smooth colour field with a few flat rectangles: cheap to make, real work for JPEG decode."""
    coarse = rng.integers(0, 256, (max(1, height // 16), max(1, width // 16), 3), dtype=np.uint8)
    pixels = np.array(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))
    for _ in range(4):
        w, h = int(rng.integers(4, max(5, width // 2))), int(rng.integers(4, max(5, height // 2)))
        x, y = int(rng.integers(0, max(1, width - w))), int(rng.integers(0, max(1, height - h)))
        pixels[y : y + h, x : x + w] = rng.integers(0, 256, 3, dtype=np.uint8)
    return Image.fromarray(pixels)


def write_images(
    directory: Path,
    count: int,
    sizes: list[tuple[int, int]],
    *,
    corrupt: int = 0,
    duplicates: int = 0,
    seed: int = 0,
    png_every: int = 0,
) -> ImageSet:
    """`count` distinct images (sizes cycled; every `png_every`-th a PNG, the rest JPEG), `corrupt` files that
    fail in different ways (truncated JPEG, bytes that are no image, a PNG cut after its header), and
    `duplicates` byte-identical copies of good images under other names. Spread over sub-folders of 1,000."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    images = ImageSet(directory)

    def path(name: str, i: int) -> Path:
        folder = directory / f"part-{i // 1000:03d}"
        folder.mkdir(exist_ok=True)
        return folder / name

    for i in range(count):
        width, height = sizes[i % len(sizes)]
        is_png = png_every > 0 and i % png_every == png_every - 1
        target = path(f"img-{i:06d}.{'png' if is_png else 'jpg'}", i)
        picture(rng, width, height).save(target, **({} if is_png else {"quality": 85}))
        images.good.append(target)
    for k in range(corrupt):
        source = images.good[k % len(images.good)].read_bytes()
        kind = k % 3
        if kind == 0:  # a JPEG (or PNG) whose data ends early
            data = source[: max(20, len(source) // 2)]
        elif kind == 1:  # no image format at all
            data = b"not an image " + rng.bytes(64)
        else:  # a PNG signature and header, then nothing
            data = b"\x89PNG\r\n\x1a\n" + rng.bytes(8 + k)
        target = path(f"bad-{k:04d}.{'png' if kind == 2 else 'jpg'}", k * 997 % max(count, 1))
        target.write_bytes(data)
        images.corrupt.append(target)
    for k in range(duplicates):
        source = images.good[(k * 7919) % len(images.good)]
        target = path(f"copy-{k:04d}-{source.name}", (k * 7919 + 500) % max(count, 1))
        target.write_bytes(source.read_bytes())
        images.duplicates.append(target)
    return images


def varied_sizes(smallest: int, largest: int, count: int = 12, seed: int = 1) -> list[tuple[int, int]]:
    """`count` (width, height) pairs between `smallest` and `largest` pixels a side, landscape and portrait."""
    rng = np.random.default_rng(seed)
    return [tuple(int(v) for v in rng.integers(smallest, largest + 1, 2)) for _ in range(count)]


# -- memory ----------------------------------------------------------------------------------------


class TreeMemory:
    """Peak resident memory of this process and of each process it starts, sampled on a thread.

    `root_peak` is this process's (the Airflow process under dag.test: scheduler loop and in-process tasks);
    `child_peaks` each descendant's own peak by pid (the engine subprocesses, one per shard); `tree_peak` the
    largest sum over the whole tree at one sample. Sampling every `interval_s` can miss a spike shorter than
    that; ru_maxrss of the children (`children_maxrss`) cannot, and is reported beside it.
    """

    def __init__(self, interval_s: float = 0.2) -> None:
        self._root = psutil.Process()
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tree-memory", daemon=True)
        self.root_start = self._root.memory_info().rss
        self.root_peak = self.root_start
        self.tree_peak = self.root_start
        self.child_peaks: dict[int, int] = {}
        self.child_names: dict[int, str] = {}
        self.samples = 0

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._sample()

    def _sample(self) -> None:
        total = 0
        try:
            rss = self._root.memory_info().rss
            self.root_peak = max(self.root_peak, rss)
            total += rss
            children = self._root.children(recursive=True)
        except psutil.Error:
            return
        for child in children:
            try:
                rss = child.memory_info().rss
                if child.pid not in self.child_names:
                    self.child_names[child.pid] = " ".join(child.cmdline()[:3])
            except psutil.Error:
                continue  # it ended between listing and reading
            self.child_peaks[child.pid] = max(self.child_peaks.get(child.pid, 0), rss)
            total += rss
        self.tree_peak = max(self.tree_peak, total)
        self.samples += 1

    def engine_peaks(self) -> list[int]:
        """Peak RSS of each engine process (`python -m detection_engine`), in start order."""
        return [
            peak
            for pid, peak in self.child_peaks.items()
            if "detection_engine" in self.child_names.get(pid, "")
        ]

    @staticmethod
    def children_maxrss() -> int:
        """The largest peak RSS of any waited-for child process (Linux reports KiB)."""
        import resource

        return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def mib(value: float) -> float:
    return round(value / 2**20, 1)


def markdown_table(headers: list[str], rows: list[list], align: str | None = None) -> str:
    """A GitHub table; `align` is one character per column, `l` or `r` (default: right but the first)."""
    align = align or "l" + "r" * (len(headers) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
