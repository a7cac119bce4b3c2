"""`python -m detection_engine`: the documented flags, the shard's files, and one-line user errors by exit code."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from detection_engine import cli, layout, schema
from detection_engine.models import load_model

ROOT = Path(__file__).resolve().parents[2]
SUMMARY_KEYS = {
    "run_id",
    "shard_index",
    "images",
    "ok",
    "failed",
    "results_uri",
    "metrics_uri",
    "wall_s",
    "images_per_s",
}


def _documented_flags() -> set[str]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text.split("```\npython -m detection_engine\n", 1)[1].split("```", 1)[0]
    return set(re.findall(r"--[a-z0-9-]+", block))


def _tiny_args(tmp_path: Path, manifest: str, *extra: str) -> list[str]:
    return [
        f"--manifest={manifest}",
        f"--output-prefix={tmp_path / 'out' / 'run-1'}",
        "--run-id=manual__2026-11-21T10:00:00+00:00",
        "--run-date=2026-11-21",
        "--shard-index=2",
        "--model=fasterrcnn_mobilenet_v3_large_320_fpn",
        "--weights=none",
        "--min-size=128",
        "--max-size=160",
        "--score-threshold=0.01",
        "--max-detections=10",
        "--batch-size=2",
        f"--summary-path={tmp_path / 'xcom' / 'return.json'}",
        *extra,
    ]


def _files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture
def manifest(tmp_path, write_images, write_manifest) -> tuple[str, list[str]]:
    good = write_images(tmp_path / "images", [(96, 64), (64, 96), (120, 80)])
    corrupt = tmp_path / "images" / "notes.jpg"
    corrupt.write_bytes(b"not an image, whatever the name says")
    uris = [good[0], str(corrupt), good[1], str(tmp_path / "images" / "missing.png"), good[2]]
    return write_manifest(tmp_path / "shard-00002.txt", uris), uris


def test_the_parser_has_exactly_the_documented_flags():
    flags = {s for a in cli.build_parser()._actions for s in a.option_strings if s.startswith("--")}
    assert flags - {"--help"} == _documented_flags()


def test_shard_run_writes_one_row_per_uri_metrics_and_summary_and_a_rerun_replaces_them(
    tmp_path, manifest, run_engine
):
    manifest_uri, uris = manifest
    args = _tiny_args(tmp_path, manifest_uri, "--log-interval-s=0.001")

    done = run_engine(*args)

    assert done.returncode == 0, done.stderr
    prefix = str(tmp_path / "out" / "run-1")
    results_uri, metrics_uri = layout.shard_results_uri(prefix, 2), layout.shard_metrics_uri(prefix, 2)

    table = pq.read_table(results_uri)
    assert table.schema.equals(schema.arrow_schema(schema.RESULTS))
    rows = table.to_pylist()
    assert [r["image_uri"] for r in rows] == uris
    assert [r["status"] for r in rows] == ["ok", "error", "ok", "error", "ok"]
    assert rows[1]["error"].startswith("not_an_image:") and rows[3]["error"].startswith("not_found:")
    assert all(r["num_detections"] > 0 for r in rows if r["status"] == "ok")
    assert all(r["random_weights"] and r["weights_id"] == "none" for r in rows)

    metrics = json.loads(Path(metrics_uri).read_text())
    assert list(metrics) == schema.column_names(schema.SHARD_METRICS)
    assert (metrics["images"], metrics["ok"], metrics["failed"]) == (5, 3, 2)
    assert json.loads(metrics["error_counts"]) == {"not_an_image": 1, "not_found": 1}
    assert metrics["random_weights"] is True and metrics["device"] == "cpu" and metrics["precision"] == "fp32"
    assert metrics["batches"] == 2 and metrics["batch_size"] == 2
    assert 0 < metrics["model_busy_fraction"] <= 1
    assert (
        metrics["batch_latency_p50_ms"] <= metrics["batch_latency_p95_ms"] <= metrics["batch_latency_max_ms"]
    )
    assert metrics["torch_version"] == torch.__version__

    summary = json.loads((tmp_path / "xcom" / "return.json").read_text())
    assert set(summary) == SUMMARY_KEYS
    assert (summary["images"], summary["ok"], summary["failed"]) == (5, 3, 2)
    assert (summary["results_uri"], summary["metrics_uri"]) == (results_uri, metrics_uri)
    assert summary["run_id"] == "manual__2026-11-21T10:00:00+00:00" and summary["shard_index"] == 2

    assert re.search(r"shard 2: \d/5 images, [\d.]+ img/s, ETA \S+", done.stderr)
    assert re.search(r"shard 2: 5/5 images, [\d.]+ img/s, done in \S+", done.stderr)
    assert "Traceback" not in done.stderr

    before = _files_under(tmp_path / "out")
    assert cli.main(args) == 0  # the retry, in-process this time
    assert (
        _files_under(tmp_path / "out")
        == before
        == ["run-1/metrics/shard-00002.json", "run-1/results/shard-00002.parquet"]
    )
    assert pq.read_table(results_uri).num_rows == 5


def test_state_dict_weights_are_recorded_and_a_wrong_sha256_exits_3(
    tmp_path, manifest, run_engine, tiny_options
):
    manifest_uri, _ = manifest
    weights = tmp_path / "weights.pth"
    torch.save(load_model(tiny_options(seed=11)).model.state_dict(), weights)
    sha256 = hashlib.sha256(weights.read_bytes()).hexdigest()
    args = _tiny_args(tmp_path, manifest_uri, f"--weights={weights}")

    assert cli.main([*args, f"--weights-sha256={sha256}"]) == 0
    metrics = json.loads(Path(layout.shard_metrics_uri(str(tmp_path / "out" / "run-1"), 2)).read_text())
    assert metrics["weights_sha256"] == sha256 and metrics["weights_id"] == f"{weights}@sha256:{sha256}"
    assert metrics["random_weights"] is False

    wrong = run_engine(*args, f"--weights-sha256={'ab' * 32}")
    assert wrong.returncode == cli.EXIT_MODEL
    assert wrong.stderr.strip().splitlines()[-1] == (
        f"detection_engine: error: state dict {weights} has sha256 {sha256}, expected {'ab' * 32}"
    )
    assert "Traceback" not in wrong.stderr


def test_pretrained_weights_that_cannot_be_downloaded_exit_3_with_one_line(tmp_path, manifest, run_engine):
    manifest_uri, _ = manifest
    offline = {
        "TORCH_HOME": str(tmp_path / "torch-home"),
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
        "NO_PROXY": "",
        "no_proxy": "",
    }
    done = run_engine(*_tiny_args(tmp_path, manifest_uri, "--weights=DEFAULT"), env=offline)

    assert done.returncode == cli.EXIT_MODEL
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("detection_engine: error: cannot load pretrained weights COCO_V1")
    assert "--weights none" in last
    assert "Traceback" not in done.stderr


def _user_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("detection_engine: error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--run-date": "21/11/2026"}, "--run-date"),
        ({"--model": "yolov8"}, "--model: invalid choice: 'yolov8'"),
        ({"--batch-size": "0"}, "--batch-size: must be 'auto' or an integer >= 1, got 0"),
        ({"--batch-size": "big"}, "--batch-size: must be 'auto' or an integer >= 1, got 'big'"),
        ({"--devices": "gpu:0"}, "--devices/--device: unknown device 'gpu:0' in 'gpu:0'"),
        ({"--devices": "auto,cpu"}, "--devices/--device: unknown device 'auto'"),
        ({"--score-threshold": "1.5"}, "--score-threshold: must be between 0 and 1"),
        ({"--weights-sha256": "abc"}, "--weights-sha256: must be 64 hexadecimal digits"),
        ({"--precision": "int8"}, "--precision: invalid choice"),
        ({"--compile": "maybe"}, "--compile: must be true or false, got 'maybe'"),
        ({"--min-size": "200"}, "--min-size 200 is larger than --max-size 160"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, manifest, capsys, change, message):
    args = [a for a in _tiny_args(tmp_path, manifest[0]) if a.split("=")[0] not in change]
    args += [f"{flag}={value}" for flag, value in change.items()]
    assert cli.main(args) == cli.EXIT_USAGE
    assert message in _user_error(capsys)


@pytest.mark.parametrize(
    ("spelled", "on"),
    [([], False), (["--compile"], True), (["--compile=true"], True), (["--compile=False"], False)],
)
def test_a_fast_path_switch_is_off_unless_given_bare_or_true(tmp_path, manifest, spelled, on):
    assert cli.parse_job([*_tiny_args(tmp_path, manifest[0]), *spelled]).compile is on


def test_missing_required_argument_exits_2(capsys):
    assert cli.main(["--manifest=x.txt"]) == cli.EXIT_USAGE
    assert "the following arguments are required" in _user_error(capsys)


def test_unreadable_manifest_exits_2(tmp_path, capsys):
    assert cli.main(_tiny_args(tmp_path, str(tmp_path / "no-such-manifest.txt"))) == cli.EXIT_USAGE
    assert "shard manifest not found" in _user_error(capsys)


def test_state_dict_that_does_not_exist_exits_3(tmp_path, manifest, capsys):
    args = _tiny_args(tmp_path, manifest[0], f"--weights={tmp_path / 'nope.pth'}")
    assert cli.main(args) == cli.EXIT_MODEL
    assert "neither a weights name" in _user_error(capsys)


def test_unwritable_output_exits_4(tmp_path, manifest, capsys):
    (tmp_path / "out").write_text("a file where the output prefix should be")
    assert cli.main(_tiny_args(tmp_path, manifest[0])) == cli.EXIT_OUTPUT
    assert "cannot write" in _user_error(capsys)


HOSTILE_MEMORY_MARGIN_MIB = 256


@pytest.mark.timeout(150)
def test_a_shard_with_special_files_and_stuck_servers_exits_0_with_one_row_each(
    tmp_path, write_images, write_manifest, run_engine
):
    import os

    from tests.hostile_servers import endless_http_server, silent_server

    good = write_images(tmp_path / "images", [(96, 64)])[0]
    fifo = tmp_path / "images" / "pipe.jpg"
    os.mkfifo(fifo)
    with silent_server() as silent, endless_http_server() as endless:
        uris = [good, str(fifo), "/dev/zero", f"{silent}/a.jpg", f"{endless}/b.jpg"]
        manifest_uri = write_manifest(tmp_path / "shard-00002.txt", uris)
        args = _tiny_args(
            tmp_path,
            manifest_uri,
            "--max-image-bytes=2097152",
            "--connect-timeout-s=1",
            "--read-timeout-s=1",
            "--image-timeout-s=3",
        )
        done = run_engine(*args, timeout=120)
    assert done.returncode == 0, done.stderr
    table = pq.read_table(layout.shard_results_uri(str(tmp_path / "out" / "run-1"), 2)).to_pylist()
    codes = {row["image_uri"]: (row["error"] or "ok").split(":")[0] for row in table}
    assert codes == {
        good: "ok",
        str(fifo): "not_a_regular_file",
        "/dev/zero": "not_a_regular_file",
        f"{silent}/a.jpg": "timeout",
        f"{endless}/b.jpg": "too_large",
    }
    # Bounded memory: the hostile inputs cost no more than a shard of the good image alone, give or take the
    # capped reads (/dev/zero or the endless body read whole would add gigabytes within the 3 s deadline).
    alone = run_engine(*_tiny_args(tmp_path, write_manifest(tmp_path / "alone.txt", [good])), timeout=120)
    assert alone.returncode == 0, alone.stderr
    assert done.peak_rss_mib < alone.peak_rss_mib + HOSTILE_MEMORY_MARGIN_MIB, (
        done.peak_rss_mib,
        alone.peak_rss_mib,
    )


# -- the engine's own files are read bounded; a stuck read never holds the process ---------------


@pytest.mark.timeout(60)
def test_a_fifo_as_the_shard_manifest_exits_2_without_waiting(tmp_path, capsys):
    fifo = tmp_path / "shard-00002.parquet"
    os.mkfifo(fifo)  # no writer: an unbounded open would block forever

    assert cli.main(_tiny_args(tmp_path, str(fifo))) == cli.EXIT_USAGE
    assert "cannot read shard manifest" in (line := _user_error(capsys)) and "not_a_regular_file" in line


@pytest.mark.timeout(60)
@pytest.mark.parametrize("special", ["fifo", "dev_zero"])
def test_a_special_file_as_the_state_dict_exits_3_without_waiting(tmp_path, manifest, capsys, special):
    weights = tmp_path / "weights.pth"
    if special == "fifo":
        os.mkfifo(weights)
    else:
        weights.symlink_to("/dev/zero")  # endless bytes: an unbounded read fills memory

    assert cli.main(_tiny_args(tmp_path, manifest[0], f"--weights={weights}")) == cli.EXIT_MODEL
    line = _user_error(capsys)
    assert f"cannot read state dict {weights}: not_a_regular_file" in line


# A filesystem whose reads never return, like a read stuck in the kernel on a hung network mount: the
# engine registers it, then runs exactly as `python -m detection_engine` does.
_STUCK_ENGINE = """
import runpy, sys, threading
import fsspec
from fsspec.spec import AbstractFileSystem

class StuckFileSystem(AbstractFileSystem):
    protocol = "stuck"
    def _open(self, path, mode="rb", **kwargs):
        threading.Event().wait()  # never set: this thread never ends

fsspec.register_implementation("stuck", StuckFileSystem)
sys.argv = ["detection_engine", *sys.argv[1:]]
runpy.run_module("detection_engine", run_name="__main__", alter_sys=True)
"""


@pytest.mark.timeout(150)
def test_the_engine_exits_once_its_files_are_written_even_with_a_fetch_thread_stuck(
    tmp_path, write_images, write_manifest
):
    good = write_images(tmp_path / "images", [(96, 64)])[0]
    manifest_uri = write_manifest(tmp_path / "shard-00002.txt", [good, "stuck://mount/a.jpg"])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "inference_image"), env.get("PYTHONPATH")]))

    done = subprocess.run(  # without a prompt exit this runs into its timeout: the stuck thread is joined
        [sys.executable, "-c", _STUCK_ENGINE, *_tiny_args(tmp_path, manifest_uri, "--image-timeout-s=1")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == cli.EXIT_OK, done.stderr
    table = pq.read_table(layout.shard_results_uri(str(tmp_path / "out" / "run-1"), 2)).to_pylist()
    codes = {row["image_uri"]: (row["error"] or "ok").split(":")[0] for row in table}
    assert codes == {good: "ok", "stuck://mount/a.jpg": "timeout"}
    assert json.loads((tmp_path / "xcom" / "return.json").read_text())["images"] == 2
    assert "shard 2: wrote" in done.stderr  # the log reached stderr before the process ended
