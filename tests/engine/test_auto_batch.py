"""--batch-size auto: 1 on a CPU, a power of two from free memory on CUDA; an explicit size always wins."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from detection_engine.auto_batch import (
    AUTO,
    CPU_BATCH,
    FREE_MEMORY_SHARE,
    MAX_GPU_BATCH,
    choose_batch_size,
    gpu_batch_size,
    max_input_pixels,
    parse_batch_size,
)
from detection_engine.inference import Detector
from detection_engine.models import load_model


def test_parse_accepts_auto_and_positive_integers_only():
    assert parse_batch_size("auto") == AUTO and parse_batch_size(" AUTO ") == AUTO
    assert parse_batch_size("16") == 16 and parse_batch_size(3) == 3
    for bad in ("0", "-2", "eight", "1.5", ""):
        with pytest.raises(ValueError, match="'auto' or an integer >= 1"):
            parse_batch_size(bad)


@given(st.integers(min_value=0, max_value=1 << 40), st.integers(min_value=1, max_value=1 << 32))
def test_gpu_batch_is_the_largest_power_of_two_that_fits(free, per_image):
    batch = gpu_batch_size(free, per_image)
    assert 1 <= batch <= MAX_GPU_BATCH and batch & (batch - 1) == 0
    budget = free * FREE_MEMORY_SHARE
    assert batch == 1 or batch * per_image <= budget
    assert batch == MAX_GPU_BATCH or 2 * batch * per_image > budget


def test_on_a_cpu_auto_is_one_and_an_explicit_size_wins(tiny_options):
    loaded = load_model(tiny_options())
    detector = Detector(loaded.model, torch.device("cpu"))
    assert choose_batch_size(AUTO, [detector, detector]) == CPU_BATCH == 1
    assert choose_batch_size(8, [detector]) == 8
    # The model's transform bounds the input: min_size x max_size of the tiny model.
    assert max_input_pixels(loaded.model.transform) == 128 * 160
