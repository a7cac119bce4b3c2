"""A shard's engine process killed at the worst moments, then run again: its files are whole or absent, never
partial, and the re-run (or a second run) leaves exactly the same files and rows.

The shard is planned by the pipeline's own manifest and sharding steps and run as the launchers run it:
`python -m detection_engine` with `launch.engine_arguments(...)`. The kills are real SIGKILLs of that process:

1. after its first progress line (mid-run, nothing written yet);
2. at the instant the results file is complete under its temporary name, before the rename that publishes it;
3. at the same instant for the metrics file, the results already published (half a shard);
4. then a run to completion, and 5. the same shard run once more.

For 2 and 3 the process runs the engine through a small wrapper that SIGKILLs itself from `os.replace` when the
target is the file in question: the exact crash window of an atomic write, hit every time instead of by luck.
A watcher thread reads the final names all along and records anything that is not a whole file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from detection_engine import layout
from detection_pipeline import manifest, sharding
from detection_pipeline.aggregate import ShardMetricsError, build_run_record, read_shard_metrics
from detection_pipeline.config import RunConfig
from detection_pipeline.launch import engine_arguments
from detection_pipeline.warehouse import open_warehouse
from tests.reliability import runs
from tests.reliability.exactly_once import TEMPORARY_SUFFIX, assert_exactly_once

pytestmark = pytest.mark.slow

RUN_ID = "manual__2026-03-03T00:00:00+00:00"
RUN_DATE = "2026-03-03"
IMAGES = 8

# Runs the engine like `python -m detection_engine`, but SIGKILLs itself as it is about to publish argv[1].
_KILL_AT_PUBLISH = """
import os, runpy, signal, sys
target = sys.argv.pop(1)
publish = os.replace
def publish_or_die(source, destination, *args, **kwargs):
    if os.fspath(destination) == target:
        os.kill(os.getpid(), signal.SIGKILL)
    return publish(source, destination, *args, **kwargs)
os.replace = publish_or_die
sys.argv[0] = "detection_engine"
runpy.run_module("detection_engine", run_name="__main__", alter_sys=True)
"""


@dataclass
class Snapshot:
    """What a phase left under the run prefix."""

    returncode: int
    published: list[str]  # files at their final names (results/, metrics/), relative to the prefix
    temporary: list[str]  # temporary files beside them
    results_rows: list[tuple] | None  # (image_uri, status) of the results file, when there is one


@dataclass
class Scenario:
    config: RunConfig
    prefix: str
    unique: int
    phases: dict[str, Snapshot] = field(default_factory=dict)
    refused_load: Exception | None = None
    refused_record: Exception | None = None
    rows_after_refusal: int | None = None
    watched_reads: int = 0
    partial_reads: list[str] = field(default_factory=list)


class FinalNameWatcher(threading.Thread):
    """Reads the shard's final file names in a loop; anything that does not read back whole is recorded."""

    def __init__(self, scenario: Scenario) -> None:
        super().__init__(daemon=True)
        self.scenario = scenario
        self.stop = threading.Event()
        self.results = Path(layout.shard_results_uri(scenario.prefix, 0))
        self.metrics = Path(layout.shard_metrics_uri(scenario.prefix, 0))

    def run(self) -> None:
        while not self.stop.wait(0.002):
            for path, read in ((self.results, self._read_results), (self.metrics, self._read_metrics)):
                if path.exists():
                    try:
                        read(path)
                        self.scenario.watched_reads += 1
                    except Exception as exc:  # a partial file, whatever the reader says about it
                        self.scenario.partial_reads.append(f"{path.name}: {exc}")

    def _read_results(self, path: Path) -> None:
        rows = pq.read_table(path).num_rows
        if rows != self.scenario.unique:
            raise ValueError(f"{rows} rows, expected {self.scenario.unique}")

    def _read_metrics(self, path: Path) -> None:
        if json.loads(path.read_bytes())["images"] != self.scenario.unique:
            raise ValueError("wrong image count")


@pytest.fixture(scope="module")
def scenario(tmp_path_factory) -> Scenario:
    """Plan a one-shard run, then kill, re-run and run again its engine process, snapshotting each phase."""
    root = tmp_path_factory.mktemp("shard-faults")
    images = root / "images"
    images.mkdir()
    for i in range(IMAGES):
        Image.new("RGB", (64 + i, 48), (30 * i, 60, 90)).save(images / f"image-{i}.png")
    config = RunConfig.from_params(runs.tiny_conf(root, str(images), batch_size=1), runs.LOGICAL_DATE)
    prefix = layout.run_prefix(config.output_uri, RUN_ID)
    stats = manifest.build_manifest(config, prefix)
    [spec] = sharding.plan_shards(config, prefix, stats.manifest_uri)
    arguments = engine_arguments(
        config,
        run_prefix=prefix,
        run_id=RUN_ID,
        run_date=RUN_DATE,
        shard_index=0,
        manifest_uri=spec["manifest_uri"],
    )
    arguments += [f"--summary-path={root / 'summary.json'}", "--log-interval-s=0.001"]
    env = {**os.environ, "PYTHONPATH": str(runs.ROOT / "inference_image")}
    scenario = Scenario(config, prefix, unique=stats.unique)
    engine = [sys.executable, "-m", "detection_engine", *arguments]

    def kill_at_publish(uri: str) -> list[str]:
        return [sys.executable, "-c", _KILL_AT_PUBLISH, uri, *arguments]

    watcher = FinalNameWatcher(scenario)
    watcher.start()
    try:
        scenario.phases["killed_mid_run"] = _snapshot(prefix, _kill_after_first_progress_line(engine, env))
        results_uri, metrics_uri = layout.shard_results_uri(prefix, 0), layout.shard_metrics_uri(prefix, 0)
        scenario.phases["killed_publishing_results"] = _snapshot(
            prefix, _run(kill_at_publish(results_uri), env)
        )
        scenario.phases["killed_publishing_metrics"] = _snapshot(
            prefix, _run(kill_at_publish(metrics_uri), env)
        )
        _try_to_load_and_record(scenario)
        scenario.phases["rerun"] = _snapshot(prefix, _run(engine, env))
        _load_and_record(scenario)
        scenario.phases["run_again"] = _snapshot(prefix, _run(engine, env))
        _load_and_record(scenario)
    finally:
        watcher.stop.set()
        watcher.join(timeout=10)
    return scenario


def _run(command: list[str], env: dict) -> int:
    return subprocess.run(command, env=env, capture_output=True, timeout=300).returncode


def _kill_after_first_progress_line(command: list[str], env: dict) -> int:
    with subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    ) as process:
        for line in process.stderr:
            if f": 1/{IMAGES} images" in line:
                process.kill()
                break
        return process.wait()


def _snapshot(prefix: str, returncode: int) -> Snapshot:
    root = Path(prefix)
    written = [
        p for folder in ("results", "metrics") if (root / folder).is_dir() for p in (root / folder).iterdir()
    ]
    names = sorted(str(p.relative_to(root)) for p in written)
    results = root / "results" / "shard-00000.parquet"
    rows = None
    if results.exists():
        table = pq.read_table(results, columns=["image_uri", "status"])
        rows = sorted(zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True))
    return Snapshot(
        returncode=returncode,
        published=[n for n in names if not n.endswith(TEMPORARY_SUFFIX)],
        temporary=[n for n in names if n.endswith(TEMPORARY_SUFFIX)],
        results_rows=rows,
    )


def _shard_files(scenario: Scenario) -> tuple[list[str], list[str]]:
    return [layout.shard_results_uri(scenario.prefix, 0)], [layout.shard_metrics_uri(scenario.prefix, 0)]


def _try_to_load_and_record(scenario: Scenario) -> None:
    """What the load_results and aggregate tasks would do with half a shard: both must refuse it."""
    warehouse = open_warehouse(scenario.config.warehouse)
    warehouse.ensure_tables()
    scenario.refused_load = _refusal(lambda: warehouse.load_run(RUN_ID, RUN_DATE, *_shard_files(scenario)))
    scenario.refused_record = _refusal(lambda: read_shard_metrics(scenario.prefix, [0]))
    scenario.rows_after_refusal = warehouse.run_counts(RUN_ID)["rows"]


def _refusal(attempt) -> Exception | None:
    try:
        attempt()
    except Exception as exc:  # which error it is, the tests assert
        return exc
    return None


def _load_and_record(scenario: Scenario) -> None:
    """The load_results and aggregate tasks' work for the shard, as the DAG does it after a detect retry."""
    warehouse = open_warehouse(scenario.config.warehouse)
    warehouse.load_run(RUN_ID, RUN_DATE, *_shard_files(scenario))
    manifest_stats = {
        "listed": scenario.unique,
        "duplicates": 0,
        "skipped_not_image": 0,
        "skipped_incremental": 0,
    }
    spec = {"shard_index": 0, "images": scenario.unique}
    record = build_run_record(
        scenario.config,
        run_id=RUN_ID,
        run_date=RUN_DATE,
        logical_date=runs.LOGICAL_DATE.isoformat(),
        run_type="manual",
        manifest_stats=manifest_stats,
        shard_specs=[spec],
        metrics=read_shard_metrics(scenario.prefix, [0]),
        started_at=None,
    )
    warehouse.write_run_record(record)


RESULTS = "results/shard-00000.parquet"
METRICS = "metrics/shard-00000.json"


def test_a_shard_killed_mid_run_publishes_nothing(scenario):
    killed = scenario.phases["killed_mid_run"]
    assert killed.returncode == -signal.SIGKILL
    assert (killed.published, killed.temporary) == ([], [])


def test_a_shard_killed_while_publishing_its_results_leaves_only_a_temporary_file(scenario):
    killed = scenario.phases["killed_publishing_results"]
    assert killed.returncode == -signal.SIGKILL
    assert killed.published == [], "the final name stays empty: nothing partial is ever there"
    assert [name.split("/")[0] for name in killed.temporary] == ["results"], "the kill hit mid-write"


def test_half_a_shard_is_refused_by_the_load_and_the_run_record(scenario):
    half = scenario.phases["killed_publishing_metrics"]
    assert half.returncode == -signal.SIGKILL
    assert half.published == [RESULTS] and len(half.results_rows) == scenario.unique
    assert [name.split("/")[0] for name in half.temporary] == ["metrics"]
    assert "shard-00000.json" in str(scenario.refused_load), scenario.refused_load
    assert scenario.rows_after_refusal == 0, "nothing of the half shard was loaded"
    assert isinstance(scenario.refused_record, ShardMetricsError) and "missing" in str(
        scenario.refused_record
    )


def test_the_rerun_completes_the_shard_and_clears_what_the_killed_attempts_left(scenario):
    rerun = scenario.phases["rerun"]
    assert rerun.returncode == 0
    assert (rerun.published, rerun.temporary) == ([METRICS, RESULTS], [])
    assert len(rerun.results_rows) == scenario.unique == IMAGES
    assert {status for _, status in rerun.results_rows} == {"ok"}


def test_the_same_shard_run_twice_writes_the_same_files_not_more(scenario):
    rerun, again = scenario.phases["rerun"], scenario.phases["run_again"]
    assert again.returncode == 0
    assert (again.published, again.temporary) == (rerun.published, [])
    assert again.results_rows == rerun.results_rows


def test_no_partial_file_was_ever_visible_under_a_final_name(scenario):
    assert scenario.partial_reads == []
    assert scenario.watched_reads > 0, "the watcher did see the files it checks"


def test_after_all_of_it_the_run_is_loaded_exactly_once(scenario):
    assert_exactly_once(scenario.config.warehouse, RUN_ID, unique=IMAGES, shards=1, prefix=scenario.prefix)
