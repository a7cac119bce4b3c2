"""Has the input landed: real folders and files, locally and on the GCS emulator; and the sensor's settings."""

from __future__ import annotations

import pytest

from detection_pipeline.errors import ManifestError, PermanentError
from detection_pipeline.input_sensor import check_input, input_landed, wait_for_input
from detection_pipeline.settings import load_settings


def test_a_local_prefix_has_landed_once_its_folder_exists(tmp_path):
    day = tmp_path / "incoming" / "2026-11-21"
    assert input_landed(str(day)) is False
    day.mkdir(parents=True)
    assert input_landed(str(day)) is True  # an empty folder makes an empty run
    assert input_landed(f"file://{day}/") is True


def test_a_manifest_file_has_landed_once_it_exists(tmp_path):
    manifest = tmp_path / "lists" / "2026-11-21.csv"
    assert input_landed(str(manifest)) is False
    manifest.parent.mkdir()
    manifest.write_text("image_uri\n/x.jpg\n")
    assert input_landed(str(manifest)) is True


def test_what_can_never_be_read_as_given_is_a_permanent_error(tmp_path):
    (tmp_path / "day.jpg").write_bytes(b"\xff\xd8")
    (tmp_path / "list.txt").mkdir()
    cases = {
        str(
            tmp_path / "day.jpg"
        ): "is a file, not a folder; a manifest file must end in .txt, .csv, .parquet",
        str(tmp_path / "list.txt"): "is a folder, not a file",
        f"{tmp_path}/a/../b": "'..' segment",
        "images/today": "relative path",
    }
    for uri, message in cases.items():
        with pytest.raises(ManifestError, match=message.replace(".", r"\.")) as caught:
            input_landed(uri)
        assert isinstance(caught.value, PermanentError), uri


def test_a_gcs_prefix_has_landed_once_an_object_is_under_it(gcs_bucket):
    import fsspec

    prefix = f"{gcs_bucket}/incoming/2026-11-21"
    assert input_landed(prefix) is False
    with fsspec.open(f"{prefix}/a.jpg", "wb") as fh:
        fh.write(b"\xff\xd8")
    assert input_landed(prefix) is True
    with pytest.raises(ManifestError, match="is a file, not a folder"):
        input_landed(f"{prefix}/a.jpg")


def test_only_scheduled_runs_wait_for_a_missing_input(tmp_path):
    missing = str(tmp_path / "2026-11-21")
    assert check_input(missing, "scheduled") is False
    for run_type in ("manual", "backfill", "asset_triggered"):
        with pytest.raises(ManifestError, match=f"does not exist; only scheduled runs wait .*{run_type} run"):
            check_input(missing, run_type)
    (tmp_path / "2026-11-21").mkdir()
    assert all(check_input(missing, t) for t in ("scheduled", "manual", "backfill"))


def test_the_sensor_reschedules_with_the_deployments_interval_and_timeout():
    settings = load_settings({"DETECTION_INPUT_POKE_INTERVAL_S": "7", "DETECTION_INPUT_TIMEOUT_S": "90"})
    sensor = wait_for_input(settings)({"config": {"input_uri": "/x"}, "run_type": "scheduled"}).operator
    assert (sensor.task_id, sensor.mode, sensor.poke_interval, sensor.timeout) == (
        "wait_for_input",
        "reschedule",
        7,
        90,
    )
