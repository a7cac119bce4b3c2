"""The ground truth is read bounded: a FIFO or a file that is not JSON is a clear, permanent GroundTruthError."""

from __future__ import annotations

import os

import pytest

from detection_pipeline.errors import PermanentError
from detection_pipeline.evaluation import GroundTruthError, load_ground_truth


@pytest.mark.timeout(30)
def test_a_fifo_as_ground_truth_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "gt.json"
    os.mkfifo(fifo)  # no writer: an unbounded open would block forever
    with pytest.raises(GroundTruthError, match="not_a_regular_file") as caught:
        load_ground_truth(str(fifo))
    assert isinstance(caught.value, PermanentError)


@pytest.mark.timeout(30)
def test_bytes_that_are_not_utf8_json_are_a_ground_truth_error(tmp_path):
    path = tmp_path / "gt.json"
    path.write_bytes(b"\xff\xfe{not json")
    with pytest.raises(GroundTruthError, match="not JSON"):
        load_ground_truth(str(path))
