"""The whole DAG on the embedded default: local files, the engine as a local process, DuckDB."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pytest
from PIL import Image

from detection_engine import layout

pytestmark = pytest.mark.slow

LOGICAL_DATE = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)


def _inputs(root: Path) -> tuple[Path, set[str], set[str]]:
    """A manifest file of URIs with URI and content duplicates, bad files and a non-image.

    Returns the manifest, the unique image paths expected in the results, and those expected to fail.
    """
    images = root / "images"
    images.mkdir()
    good = []
    for i, (size, colour) in enumerate(
        [((64, 48), "red"), ((48, 64), "green"), ((80, 60), "blue"), ((64, 64), "gray")]
    ):
        path = images / f"img-{i}.png" if i % 2 else images / f"img {i} ü.jpg"
        Image.new("RGB", size, colour).save(path)
        good.append(path)
    copy = images / "z-copy-of-0.jpg"  # img 0's bytes; sorts after it, so dedup_mode=content drops it
    copy.write_bytes(good[0].read_bytes())
    corrupt = images / "corrupt.jpg"
    corrupt.write_bytes(good[0].read_bytes()[:40])
    missing = images / "missing.png"
    notes = images / "notes.txt"
    notes.write_text("not an image")
    lines = [
        str(good[0]),
        f"file://{good[0]}",  # the same URI in another form
        str(good[1]),
        str(good[1]),  # the same URI twice
        str(good[2]),
        f"  {good[3]}  ",
        str(copy),
        str(corrupt),
        str(missing),
        str(notes),
    ]
    manifest = root / "inputs.txt"
    manifest.write_text("\n".join(lines) + "\n")
    expected = {str(p) for p in [*good, corrupt, missing]}
    return manifest, expected, {str(corrupt), str(missing)}


def _conf(tmp_path: Path, manifest: Path) -> dict:
    return {
        "input_uri": str(manifest),
        "output_uri": str(tmp_path / "output"),
        "warehouse": f"duckdb:///{tmp_path / 'warehouse.duckdb'}",
        "weights": "none",
        "min_size": 64,
        "max_size": 96,
        "batch_size": 2,
        "shard_size": 3,
        "dedup_mode": "content",
        "score_threshold": 0.05,
    }


def _counts(warehouse: Path, run_id: str) -> dict:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return {
            "results": con.execute("SELECT count(*) FROM results WHERE run_id = ?", [run_id]).fetchone()[0],
            "all_results": con.execute("SELECT count(*) FROM results").fetchone()[0],
            "runs": con.execute("SELECT count(*) FROM runs").fetchone()[0],
            "shard_metrics": con.execute("SELECT count(*) FROM shard_metrics").fetchone()[0],
        }


def test_whole_dag_on_the_embedded_default(tmp_path, load_dag):
    manifest, expected, failing = _inputs(tmp_path)
    conf = _conf(tmp_path, manifest)
    warehouse = tmp_path / "warehouse.duckdb"
    dag = load_dag()

    first = dag.test(logical_date=LOGICAL_DATE, run_after=LOGICAL_DATE, run_conf=conf)
    assert str(first.state) in ("success", "DagRunState.SUCCESS")

    with duckdb.connect(str(warehouse), read_only=True) as con:
        rows = con.execute(
            "SELECT image_uri, status, error, width, height, random_weights FROM results WHERE run_id = ?",
            [first.run_id],
        ).fetchall()
        record = dict(
            zip(
                [
                    d[0]
                    for d in con.execute("SELECT * FROM runs WHERE run_id = ?", [first.run_id]).description
                ],
                con.execute("SELECT * FROM runs WHERE run_id = ?", [first.run_id]).fetchone(),
                strict=True,
            )
        )
    by_uri = {uri: (status, error, w, h, rnd) for uri, status, error, w, h, rnd in rows}
    assert len(rows) == len(by_uri) == len(expected), "exactly one row per unique image"
    assert set(by_uri) == expected
    assert {uri for uri, (status, *_rest) in by_uri.items() if status == "error"} == failing
    assert all(by_uri[uri][1] for uri in failing), "every error row says why"
    assert all(rnd for *_rest, rnd in by_uri.values()), "random weights are flagged in every row"
    assert by_uri[str(tmp_path / "images" / "img-1.png")][2:4] == (48, 64)

    assert record["listed"] == 9 and record["skipped_not_image"] == 1
    assert record["duplicates"] == 3  # two URI duplicates and one content duplicate
    assert (record["processed"], record["ok"], record["failed"]) == (6, 4, 2)
    assert record["shards"] == 2 and record["run_type"] == "manual"
    assert record["torch_version"] and record["torchvision_version"] and record["airflow_version"]
    assert record["model_name"] == "fasterrcnn_resnet50_fpn" and record["random_weights"] is True
    assert record["estimated_cost_usd"] is not None and record["images_per_s"] > 0

    assert Path(layout.report_uri(layout.run_prefix(conf["output_uri"], first.run_id))).is_file()

    before = _counts(warehouse, first.run_id)
    second = dag.test(logical_date=LOGICAL_DATE, run_after=LOGICAL_DATE, run_conf=conf)
    assert second.run_id == first.run_id
    assert str(second.state) in ("success", "DagRunState.SUCCESS")
    assert (
        _counts(warehouse, first.run_id)
        == before
        == {
            "results": 6,
            "all_results": 6,
            "runs": 1,
            "shard_metrics": 2,
        }
    )


def test_an_empty_input_is_a_clean_recorded_run(tmp_path, load_dag):
    empty = tmp_path / "empty"
    empty.mkdir()
    conf = {**_conf(tmp_path, empty), "input_uri": str(empty)}
    run = load_dag().test(logical_date=LOGICAL_DATE, run_after=LOGICAL_DATE, run_conf=conf)
    assert str(run.state) in ("success", "DagRunState.SUCCESS")
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("SELECT processed, ok, failed, shards FROM runs").fetchall() == [(0, 0, 0, 0)]
        assert con.execute("SELECT count(*) FROM results").fetchone()[0] == 0


def test_a_bad_conf_fails_before_any_shard_runs(tmp_path, load_dag):
    conf = {**_conf(tmp_path, tmp_path), "batch_size": -1, "model": "yolo"}
    try:
        run = load_dag().test(logical_date=LOGICAL_DATE, run_after=LOGICAL_DATE, run_conf=conf)
    except Exception as exc:  # Params' JSON schema may reject it as the run is created
        assert "batch_size" in str(exc) or "model" in str(exc)
    else:
        assert "success" not in str(run.state)
    assert not (tmp_path / "output").exists(), "nothing may be written for a rejected conf"
