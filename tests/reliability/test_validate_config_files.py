"""The files a conf names are checked in validate_config, before any shard (detection_pipeline/preflight.py):
a state dict that is missing or not COCO ground truth fails the run at once; a state dict's sha256 is pinned,
so the incremental skip finds what the engine recorded for those weights.

The checks and their messages one by one: tests/pipeline/test_preflight.py.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import duckdb
import pytest
from PIL import Image

from tests.reliability import runs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

DAY = dt.datetime(2026, 3, 11, tzinfo=dt.UTC)


def _images(folder: Path, count: int) -> None:
    folder.mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", (64, 48), (50 * i, 100, 150)).save(folder / f"image-{i}.png")


def _missing(root: Path) -> dict:
    return {"weights": str(root / "gone.pth")}


def _folder(root: Path) -> dict:
    (root / "folder.pth").mkdir()
    return {"weights": str(root / "folder.pth")}


def _wrong_checksum(root: Path) -> dict:
    (root / "w.pth").write_bytes(b"weights")
    return {"weights": str(root / "w.pth"), "weights_sha256": "0" * 64}


def _not_coco(root: Path) -> dict:
    (root / "instances.json").write_text(json.dumps({"images": [], "annotations": []}))
    return {"ground_truth_uri": str(root / "instances.json")}


# conf overrides -> the field the refusal names, and why
REFUSED = {
    "missing state dict": (_missing, "weights", "does not exist"),
    "state dict folder": (_folder, "weights", "is_directory"),
    "wrong checksum": (_wrong_checksum, "weights_sha256", "has sha256"),
    "not COCO ground truth": (_not_coco, "ground_truth_uri", "categories missing"),
}


@pytest.mark.parametrize(("make", "field", "reason"), REFUSED.values(), ids=REFUSED.keys())
def test_a_file_the_conf_names_that_cannot_be_used_fails_validate_config_before_any_shard(
    own_dag, tmp_path, capfd, make, field, reason
):
    _images(tmp_path / "images", 2)
    conf = runs.tiny_conf(tmp_path, str(tmp_path / "images"), **make(tmp_path))

    day = DAY - dt.timedelta(days=1 + list(REFUSED.values()).index((make, field, reason)))  # a run id each
    run = runs.run_dag(own_dag, conf, day)

    assert runs.state(run) == "failed"
    tasks = runs.task_instances(own_dag.dag_id, run.run_id)
    assert tasks.pop(("validate_config", -1)) == ("failed", 1), "failed at once, without retries"
    assert {state for state, _ in tasks.values()} <= {"upstream_failed", None}, "nothing else ran"
    out = capfd.readouterr().out
    assert f"invalid run config: {field}: " in out and reason in out
    assert not (tmp_path / "output").exists() and not (tmp_path / "warehouse.duckdb").exists()


def test_a_state_dict_run_is_keyed_by_its_sha256_and_an_incremental_run_skips_what_it_did(own_dag, tmp_path):
    import torch
    from torchvision.models import get_model_builder

    torch.manual_seed(0)
    model = get_model_builder(runs.MODEL)(weights=None, weights_backbone=None, num_classes=91)
    weights = tmp_path / "detector.pth"
    torch.save(model.state_dict(), weights)
    weights_id = f"{weights}@sha256:{hashlib.sha256(weights.read_bytes()).hexdigest()}"
    _images(tmp_path / "images", 3)
    conf = runs.tiny_conf(tmp_path, str(tmp_path / "images"), weights=str(weights), incremental=True)

    first = runs.run_dag(own_dag, conf, DAY)
    again = runs.run_dag(own_dag, conf, DAY + dt.timedelta(days=1))

    assert runs.state(first) == runs.state(again) == "success"
    with duckdb.connect(conf["warehouse"].removeprefix("duckdb://"), read_only=True) as con:
        rows = con.execute("SELECT DISTINCT run_id, weights_id FROM results").fetchall()
        records = con.execute(
            "SELECT run_id, weights_id, weights_sha256, processed, skipped_incremental FROM runs ORDER BY run_id"
        ).fetchall()
    assert rows == [(first.run_id, weights_id)], "the engine recorded the pinned weights id"
    digest = weights_id.rsplit(":", 1)[1]
    assert records == [
        (first.run_id, weights_id, digest, 3, 0),
        (again.run_id, weights_id, digest, 0, 3),
    ], "the second run found the first one's results under the same key"


def test_a_ground_truth_naming_none_of_the_images_fails_the_manifest_step_before_any_shard(
    own_dag, tmp_path, capfd
):
    _images(tmp_path / "images", 2)
    gt = {
        "images": [{"id": 1, "file_name": "other-0.png"}],
        "annotations": [],
        "categories": [{"id": 1, "name": "person"}],
    }
    (tmp_path / "instances.json").write_text(json.dumps(gt))
    conf = runs.tiny_conf(
        tmp_path, str(tmp_path / "images"), ground_truth_uri=str(tmp_path / "instances.json")
    )

    run = runs.run_dag(own_dag, conf, DAY - dt.timedelta(days=30))

    assert runs.state(run) == "failed"
    tasks = runs.task_instances(own_dag.dag_id, run.run_id)
    assert tasks.pop(("validate_config", -1))[0] == tasks.pop(("wait_for_input", -1))[0] == "success"
    assert tasks.pop(("build_manifest", -1)) == ("failed", 1), "failed at once, without retries"
    assert {state for state, _ in tasks.values()} <= {"upstream_failed", None}, "no shard ran"
    assert "none of the run's 2 images matches a file_name" in capfd.readouterr().out
