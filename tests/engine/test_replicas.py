"""--devices with two CPU replicas: every input exactly once, the same batches and detections as one device,
each replica's work in the shard metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from detection_engine import cli, layout
from detection_engine.pipeline import PipelineOptions, run_pipeline
from detection_engine.replicas import detectors_for, load_replicas
from tests.engine.conftest import MIXED_SIZES, exact_detections


def test_two_replicas_give_every_input_once_with_one_devices_batches_and_detections(
    tmp_path, tiny_options, write_images
):
    good = write_images(tmp_path / "images", MIXED_SIZES * 2)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 not the rest of a JPEG")
    bad = [str(corrupt), str(tmp_path / "missing.png")]
    uris = [*good[:5], bad[0], *good[5:11], bad[1], *good[11:]]
    cpu = torch.device("cpu")
    one = load_replicas(tiny_options(), [cpu])
    two = load_replicas(tiny_options(), [cpu, cpu])
    options = PipelineOptions(batch_size=2, decode_workers=1)

    single = run_pipeline(uris, detectors_for(one, 0.01, 20), options)
    paired = run_pipeline(uris, detectors_for(two, 0.01, 20), options)

    assert [r.uri for r in paired.results] == uris
    assert paired.batches == single.batches  # batches do not depend on the number of devices
    assert [r.error for r in paired.results] == [r.error for r in single.results]
    assert [exact_detections(r) for r in paired.results] == [exact_detections(r) for r in single.results]
    ok = sum(r.error is None for r in paired.results)
    assert [d["device"] for d in paired.devices] == ["cpu", "cpu"]
    assert sum(d["images"] for d in paired.devices) == ok == sum(len(b) for b in paired.batches)
    assert sum(d["batches"] for d in paired.devices) == len(paired.batches)
    assert all(d["batches"] > 0 and 0 < d["busy_fraction"] <= 1 for d in paired.devices)
    assert single.devices[0]["images"] == ok


def test_replicas_are_copies_of_one_load(tiny_options):
    first, second = load_replicas(tiny_options(), [torch.device("cpu")] * 2, channels_last=True)
    assert first.model is not second.model and first.weights_id == second.weights_id
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    convolutions = [p for p in first.model.parameters() if p.dim() == 4]
    assert convolutions and all(w.is_contiguous(memory_format=torch.channels_last) for w in convolutions)


def test_a_shard_on_two_cpu_replicas_writes_the_same_rows_and_lists_both_devices(
    tmp_path, write_images, write_manifest
):
    images = write_images(tmp_path / "images", MIXED_SIZES)
    manifest = write_manifest(tmp_path / "shard.txt", [*images, str(tmp_path / "missing.png")])

    def shard(name: str, *extra: str) -> tuple[list[dict], dict]:
        prefix = str(tmp_path / name)
        args = [
            f"--manifest={manifest}", f"--output-prefix={prefix}", "--run-id=r", "--run-date=2026-12-02",
            "--shard-index=0", "--model=fasterrcnn_mobilenet_v3_large_320_fpn", "--weights=none",
            "--min-size=128", "--max-size=160", "--score-threshold=0.01",
            f"--summary-path={tmp_path / name / 'summary.json'}", *extra,
        ]  # fmt: skip
        assert cli.main(args) == cli.EXIT_OK
        rows = pq.read_table(layout.shard_results_uri(prefix, 0)).to_pylist()
        return rows, json.loads(Path(layout.shard_metrics_uri(prefix, 0)).read_text())

    one_rows, one = shard("one", "--devices=cpu")
    two_rows, two = shard("two", "--devices=cpu,cpu", "--batch-size=2")
    auto_rows, _ = shard("auto", "--devices=cpu", "--batch-size=1")

    keep = ("image_uri", "status", "error", "width", "height", "detections")
    assert [{k: r[k] for k in keep} for r in one_rows] == [{k: r[k] for k in keep} for r in auto_rows]
    assert [r["image_uri"] for r in two_rows] == [r["image_uri"] for r in one_rows]
    assert [r["status"] for r in two_rows] == ["ok"] * len(images) + ["error"]
    assert one["batch_size"] == 1  # auto on a CPU
    assert two["batch_size"] == 2 and two["batches"] == len(images) // 2
    devices = json.loads(two["devices"])
    assert [d["device"] for d in devices] == ["cpu", "cpu"]
    assert sum(d["images"] for d in devices) == two["ok"] == len(images)
    assert [d["images"] for d in json.loads(one["devices"])] == [len(images)]
    assert np.isclose(
        two["infer_s"], sum(d["busy_fraction"] for d in devices) * (two["images"] / two["images_per_s"])
    )
