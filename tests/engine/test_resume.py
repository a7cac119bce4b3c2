"""A shard killed (SIGKILL) or stopped (SIGTERM) at any point, then run again: one row per input, the rerun
resumes what had been committed, and no part is left behind.

The signals hit a real engine process (cli.main in a child process) from inside it: once its k-th image is
done, or from `os.replace` just before or just after it publishes its n-th part or its results file (as
tests/reliability/test_shard_faults.py does), so the crash windows of a commit and of the final write are hit
every time instead of by luck.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from detection_engine import layout
from detection_engine.parts import PREEMPTED, CommitPolicy, read_committed, union_in_manifest_order
from detection_engine.pipeline import ImageResult
from detection_engine.writer import RowContext, results_table

IMAGES = 6
MODEL = "fasterrcnn_mobilenet_v3_large_320_fpn"


def _engine_child(arguments: list[str], kill: tuple | None) -> None:
    """The engine's `main` in a child forked from a server that has torch imported already (~4 s saved per
    run), signalling itself where `kill` says: ("progress", k, "-", SIG) once k images are done, or
    (kind, n, "before"|"after", SIG) around the os.replace that publishes the n-th part or results file."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    import torch

    from detection_engine import cli, progress

    torch.set_num_threads(1)  # one image at a time; more threads only contend on a shared CI machine

    if kill is not None:
        kind, nth, when, name = kill
        sig = getattr(signal, name)
        if kind == "progress":
            update = progress.Progress.update

            def update_and_signal(self, done: int) -> None:
                update(self, done)
                if done == nth:
                    os.kill(os.getpid(), sig)

            progress.Progress.update = update_and_signal
        else:
            publish, seen = os.replace, [0]

            def is_target(path: str) -> bool:
                if kind == "part":
                    return os.path.basename(path).startswith("part-")
                return "/results/" in path and path.endswith(".parquet")

            def publish_and_signal(source, destination, *args, **kwargs):
                hit = is_target(os.fspath(destination))
                seen[0] += hit
                fire = hit and seen[0] == nth
                if fire and when == "before":
                    os.kill(os.getpid(), sig)
                published = publish(source, destination, *args, **kwargs)
                if fire and when == "after":
                    os.kill(os.getpid(), sig)
                return published

            os.replace = publish_and_signal
    os._exit(cli.main(arguments))


@pytest.fixture(scope="module")
def engine_runs():
    """run(arguments, kill=None) -> exit code (negative: killed by that signal), each run a fresh fork."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["detection_engine.cli"])

    def run(arguments: list[str], kill: tuple | None = None) -> int:
        child = context.Process(target=_engine_child, args=(arguments, kill))
        child.start()
        child.join(timeout=120)
        if child.exitcode is None:
            child.kill()
            child.join()
            pytest.fail(f"the engine did not finish in 120 s: {arguments}")
        return child.exitcode

    return run


@pytest.fixture(scope="module")
def shard_inputs(tmp_path_factory, write_images, write_manifest):
    root = tmp_path_factory.mktemp("resume")
    sizes = [(56 + 4 * i, 48) for i in range(IMAGES)]
    uris = write_images(root / "images", sizes)
    return write_manifest(root / "shard.txt", uris), uris


def _arguments(manifest: str, out: Path, commit_every: int) -> list[str]:
    return [
        f"--manifest={manifest}",
        f"--output-prefix={out}",
        "--run-id=r1",
        "--run-date=2026-03-03",
        "--shard-index=0",
        f"--model={MODEL}",
        "--weights=none",
        "--device=cpu",
        "--batch-size=1",
        "--min-size=48",
        "--max-size=80",
        "--score-threshold=0.01",
        f"--commit-every={commit_every}",
        "--commit-every-s=0",
        "--log-interval-s=0.000001",
        f"--summary-path={out / 'summary.json'}",
    ]


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


kills = st.one_of(
    st.tuples(st.just("progress"), st.integers(1, IMAGES - 1), st.just("-")),
    st.tuples(st.just("part"), st.integers(1, 2), st.sampled_from(["before", "after"])),
    st.tuples(st.just("results"), st.just(1), st.sampled_from(["before", "after"])),
)


@pytest.mark.slow
@settings(
    deadline=None, max_examples=4, suppress_health_check=[HealthCheck.function_scoped_fixture], database=None
)
@example(kill=("progress", 3, "-"), name="SIGTERM", commit_every=2)
@example(kill=("part", 2, "before"), name="SIGKILL", commit_every=1)
@given(kill=kills, name=st.sampled_from(["SIGKILL", "SIGTERM"]), commit_every=st.integers(1, 3))
def test_a_shard_signalled_anywhere_then_rerun_has_one_row_per_input_and_no_parts_left(
    shard_inputs, engine_runs, kill, name, commit_every
):
    manifest, uris = shard_inputs
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        arguments = _arguments(manifest, out, commit_every)
        parts = Path(layout.shard_parts_prefix(str(out), 0))
        first = engine_runs(arguments, (*kill, name))

        left = _files(parts)
        committed = [n for n in left if layout.PART_NAME.fullmatch(n)]
        records = [json.loads((parts / n).read_text()) for n in left if layout.ATTEMPT_NAME.fullmatch(n)]
        if name == "SIGKILL":
            assert first == -signal.SIGKILL
        elif kill[0] == "progress" or kill[0] == "part":
            assert first == 5, "a SIGTERM mid-shard is a clean stop that says 'preempted'"
            assert [r["stopped"] for r in records] == [PREEMPTED]
        else:
            assert first == 0, "a SIGTERM during the final write lets the finished shard end"

        assert engine_runs(arguments) == 0

        table = pq.read_table(layout.shard_results_uri(str(out), 0))
        assert table.column("image_uri").to_pylist() == uris, "one row per input, in manifest order"
        metrics = json.loads(Path(layout.shard_metrics_uri(str(out), 0)).read_text())
        assert metrics["images"] == IMAGES
        assert (metrics["resumed_images"] > 0) == bool(committed), "resumed whenever a part was committed"
        assert metrics["attempt"] == (2 if records else 1)
        assert metrics["preemptions"] == sum(r["stopped"] == PREEMPTED for r in records)
        assert _files(parts) == [], "the parts are removed once the results file holds them"
        assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def _ctx(**overrides) -> RowContext:
    from datetime import UTC, date, datetime

    values = {
        "run_id": "r1",
        "run_date": date(2026, 3, 3),
        "shard_index": 0,
        "model_name": MODEL,
        "weights_id": "none",
        "random_weights": True,
        "processed_at": datetime(2026, 3, 3, tzinfo=UTC),
        "categories": ["background"],
    }
    return RowContext(**(values | overrides))


def _write_part(out: Path, attempt: int, part: int, uris: list[str], ctx: RowContext) -> None:
    path = Path(layout.shard_part_uri(str(out), 0, attempt, part))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(results_table([ImageResult(u, "not_found: gone") for u in uris], ctx), path)


@settings(deadline=None, max_examples=30, database=None)
@given(
    manifest=st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=8, unique=True),
    parts=st.lists(st.lists(st.sampled_from("abcdefghxy"), max_size=5), max_size=4),
)
def test_committed_parts_resume_each_manifest_uri_at_most_once_and_the_union_is_the_manifest(manifest, parts):
    """Overlapping parts (two attempts alive at once), URIs the manifest no longer lists: each URI once."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for i, part in enumerate(parts):
            _write_part(out, 1 + i % 2, i, part, _ctx())
        resumed = read_committed(str(out), 0, manifest, _ctx())
        done = resumed.table.column("image_uri").to_pylist()
        assert len(done) == len(set(done)) and set(done) == set(manifest) & {u for p in parts for u in p}
        assert resumed.attempt == (max(1 + i % 2 for i in range(len(parts))) + 1 if parts else 1)
        rest = [u for u in manifest if u not in set(done)]
        fresh = results_table([ImageResult(u, None) for u in rest], _ctx())
        union = union_in_manifest_order(resumed.table, fresh, manifest)
        assert union.column("image_uri").to_pylist() == manifest


def test_a_part_of_another_model_is_not_resumed(tmp_path):
    _write_part(tmp_path, 1, 0, ["a", "b"], _ctx(model_name="retinanet_resnet50_fpn"))
    _write_part(tmp_path, 1, 1, ["c"], _ctx())
    resumed = read_committed(str(tmp_path), 0, ["a", "b", "c"], _ctx())
    assert resumed.table.column("image_uri").to_pylist() == ["c"]
    assert isinstance(resumed.table, pa.Table) and resumed.attempt == 2


@pytest.mark.parametrize(
    ("policy", "pending", "since_s", "due"),
    [
        (CommitPolicy(3, 0), 3, 0.0, True),
        (CommitPolicy(3, 0), 2, 1e6, False),
        (CommitPolicy(0, 10), 1, 10.0, True),
        (CommitPolicy(0, 10), 100, 9.9, False),
        (CommitPolicy(3, 10), 0, 1e6, False),
    ],
)
def test_commit_policy(policy, pending, since_s, due):
    assert policy.due(pending, since_s) is due
