"""validate_config's file checks: a state dict's existence and checksum, a ground truth read and summarised."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import fsspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detection_engine import catalog
from detection_pipeline import preflight
from detection_pipeline.config import ConfigError, RunConfig
from tests.gcs_emulator import object_bytes
from tests.hostile_servers import fixed_http_server


def _config(tmp_path: Path, **overrides) -> RunConfig:
    return RunConfig(
        input_uri="gs://images/in",
        output_uri=str(tmp_path / "out"),
        warehouse=f"duckdb://{tmp_path}/w.duckdb",
        **overrides,
    )


def _state_dict(tmp_path: Path, data: bytes = b"not really a state dict, but bytes to hash") -> Path:
    path = tmp_path / "detector.pth"
    path.write_bytes(data)
    return path


# -- the state dict --------------------------------------------------------------------------------


def test_a_state_dict_s_sha256_is_pinned_so_the_weights_id_is_the_engine_s(tmp_path):
    path = _state_dict(tmp_path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()

    pinned = preflight.pin_weights(_config(tmp_path, weights=str(path)))

    assert pinned.weights_sha256 == digest
    assert pinned.weights == str(path)
    # what build_manifest's incremental skip asks the warehouse for, and what the engine records per row
    assert (
        catalog.weights_id(pinned.model, pinned.weights, pinned.weights_sha256) == f"{path}@sha256:{digest}"
    )
    assert RunConfig.from_dict(pinned.to_dict()) == pinned, "the pinned config survives XCom"


def test_a_given_sha256_that_matches_is_kept_and_one_that_does_not_is_refused(tmp_path):
    path = _state_dict(tmp_path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    given_upper = _config(tmp_path, weights=str(path), weights_sha256=digest.upper())
    assert preflight.pin_weights(given_upper).weights_sha256 == digest

    wrong = _config(tmp_path, weights=str(path), weights_sha256="0" * 64)
    with pytest.raises(
        ConfigError, match=rf"^weights_sha256: the state dict .* has sha256 {digest}, not 0{{64}}$"
    ):
        preflight.pin_weights(wrong)


@pytest.mark.parametrize("weights", ["DEFAULT", "COCO_V1", "none"])
def test_enum_and_random_weights_are_left_alone(tmp_path, weights):
    config = _config(tmp_path, weights=weights)
    assert preflight.pin_weights(config) is config


def test_a_state_dict_that_cannot_be_used_is_refused_naming_weights(tmp_path):
    missing = tmp_path / "missing.pth"
    folder = tmp_path / "folder.pth"
    folder.mkdir()
    fifo = tmp_path / "fifo.pth"
    os.mkfifo(fifo)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    for path, message in (
        (missing, "does not exist"),
        (folder, "is_directory"),
        (fifo, "not_a_regular_file"),  # refused without blocking on a reader-less FIFO
        (empty, r"is empty \(0 bytes\)"),
    ):
        with pytest.raises(ConfigError, match=rf"^weights: .*{message}"):
            preflight.pin_weights(_config(tmp_path, weights=str(path)))


def test_a_state_dict_over_the_byte_cap_is_refused_before_it_is_read_whole(tmp_path):
    path = _state_dict(tmp_path, b"x" * 2048)
    with pytest.raises(ConfigError, match=r"^weights: cannot read .*too_large"):
        preflight.file_sha256(str(path), field="weights", max_bytes=1024)


def test_a_store_that_fails_to_serve_the_file_is_retryable_not_a_config_error():
    with fixed_http_server(503, b"try later") as url:
        with pytest.raises(preflight.PreflightUnavailable, match=r"^weights: cannot read .*HTTP 503"):
            preflight.file_sha256(f"{url}/detector.pth", field="weights")


def test_a_state_dict_on_gcs_is_hashed_in_place(gcs_bucket, tmp_path):
    data = object_bytes(3 << 20, seed=1)  # several of the reader's chunks
    uri = f"{gcs_bucket}/models/detector.pth"
    with fsspec.open(uri, "wb") as fh:
        fh.write(data)
    pinned = preflight.pin_weights(_config(tmp_path, weights=uri))
    assert pinned.weights_sha256 == hashlib.sha256(data).hexdigest()


@settings(max_examples=25, deadline=None)
@given(data=st.binary(min_size=1, max_size=3 << 20))
def test_the_streamed_sha256_is_the_sha256_of_the_bytes(data):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "w.pt"
        path.write_bytes(data)
        assert preflight.file_sha256(str(path), field="weights") == hashlib.sha256(data).hexdigest()


# -- the ground truth ------------------------------------------------------------------------------


def _ground_truth(tmp_path: Path, data) -> str:
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_a_ground_truth_is_read_and_summarised(tmp_path):
    gt = {
        "images": [{"id": i, "file_name": f"{i}.jpg"} for i in range(3)],
        "annotations": [{"image_id": 0, "category_id": 1, "bbox": [0, 0, 4, 5]}] * 4,
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}],
    }
    uri = _ground_truth(tmp_path, gt)
    summary = preflight.ground_truth_summary(_config(tmp_path, ground_truth_uri=uri))
    assert summary == {"uri": uri, "images": 3, "annotations": 4, "categories": 2}
    assert preflight.ground_truth_summary(_config(tmp_path)) is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"images": [], "annotations": []}, "categories missing or not a list"),
        ([1, 2, 3], "expected a JSON object"),
        ("not json {", "is not JSON"),
    ],
)
def test_a_ground_truth_that_is_not_coco_is_a_config_error(tmp_path, content, message):
    path = tmp_path / "instances.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ConfigError, match=rf"^ground_truth_uri: .*{message}"):
        preflight.ground_truth_summary(_config(tmp_path, ground_truth_uri=str(path)))


def test_a_missing_ground_truth_is_a_config_error(tmp_path):
    config = _config(tmp_path, ground_truth_uri=str(tmp_path / "nowhere.json"))
    with pytest.raises(ConfigError, match=r"^ground_truth_uri: .*does not exist"):
        preflight.checked(config)


def _manifest(tmp_path: Path, image_uris: list[str]) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "manifest.parquet"
    pq.write_table(pa.table({"image_uri": pa.array(image_uris, pa.string())}), path)
    return str(path)


def test_a_ground_truth_must_name_some_of_the_manifest_s_images(tmp_path):
    gt = {"images": [{"id": 1, "file_name": "val/1.jpg"}], "annotations": [], "categories": []}
    config = _config(tmp_path, ground_truth_uri=_ground_truth(tmp_path, gt))

    preflight.ground_truth_matches(config, _manifest(tmp_path, ["gs://b/val/1.jpg", "gs://b/val/2.jpg"]))
    preflight.ground_truth_matches(config, _manifest(tmp_path, []))  # nothing to score, nothing to check
    preflight.ground_truth_matches(
        _config(tmp_path), _manifest(tmp_path, ["gs://b/x.jpg"])
    )  # no ground truth
    with pytest.raises(
        ConfigError, match=r"^ground_truth_uri: none of the run's 2 images matches a file_name"
    ):
        preflight.ground_truth_matches(config, _manifest(tmp_path, ["gs://b/a.jpg", "gs://b/b.jpg"]))
