"""A re-planned run leaves only its own files, and the readers read only the planned shards.

The same run id first ran with three shards (5 images), then again with one (3 images): the second plan
removes shards 1 and 2's results, metrics and shard manifests, and the report reads the new run only.
"""

from __future__ import annotations

from pathlib import Path

from detection_engine import layout
from detection_pipeline.aggregate import read_shard_metrics
from detection_pipeline.config import RunConfig
from detection_pipeline.evaluation import read_results
from detection_pipeline.manifest import build_manifest
from detection_pipeline.report.run_data import read_run
from detection_pipeline.sharding import plan_shards
from tests.pipeline.shard_files import write_run

RUN_ID = "manual__2026-12-01T00:00:00+00:00"


def _plan(tmp_path: Path, images: list[str], shard_size: int) -> list[dict]:
    listing = tmp_path / "inputs.txt"
    listing.write_text("\n".join(images) + "\n")
    config = RunConfig(
        input_uri=str(listing),
        output_uri=str(tmp_path / "out"),
        warehouse=f"duckdb://{tmp_path}/w.duckdb",
        shard_size=shard_size,
    )
    prefix = layout.run_prefix(config.output_uri, RUN_ID)
    stats = build_manifest(config, prefix)
    return plan_shards(config, prefix, stats.manifest_uri)


def test_a_rerun_with_fewer_shards_leaves_and_counts_only_its_own_files(tmp_path):
    prefix = layout.run_prefix(str(tmp_path / "out"), RUN_ID)
    first = _plan(tmp_path, [f"gs://images/a{i}.jpg" for i in range(5)], shard_size=2)
    assert len(first) == 3
    write_run(prefix, RUN_ID, [2, 2, 1])  # the first attempt's files

    second = _plan(tmp_path, [f"gs://images/a{i}.jpg" for i in range(3)], shard_size=3)
    assert [spec["shard_index"] for spec in second] == [0]
    write_run(prefix, RUN_ID, [3])  # the new attempt's only shard

    for folder in ("shards", "results", "metrics"):
        names = sorted(p.name for p in Path(prefix, folder).iterdir())
        assert names == [n for n in names if n.startswith("shard-00000.")], folder
    data = read_run(prefix, shards=len(second))
    assert (data.images, data.results_files, len(data.shards)) == (3, 1, 1)
    assert read_results(prefix).num_rows == 3  # evaluate's glob finds the new attempt only, too
    assert [m["shard_index"] for m in read_shard_metrics(prefix, [0])] == [0]


def test_the_report_reads_only_the_planned_shards_even_when_stale_files_remain(tmp_path):
    prefix = str(tmp_path / "run")
    write_run(prefix, RUN_ID, [3, 2])  # shard 1 is left over from somewhere else

    assert read_run(prefix, shards=1).images == 3
    assert read_run(prefix).images == 5  # without a plan, everything present
