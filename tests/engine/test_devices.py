"""--devices: the list syntax, and what it resolves to on a machine without CUDA (this one)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from detection_engine.devices import DeviceError, parse_devices, resolve_devices

# Every spelling the syntax accepts ("auto" only alone): what the invalid-token strategy must avoid.
_OK = {"auto", "cpu", "cuda"} | {f"cuda:{i:0{w}d}" for w in (1, 2, 3) for i in range(1000)}
_VALID = st.sampled_from(["cpu", "cuda", "cuda:0", "cuda:1", "cuda:7", "CPU", "Cuda:3"])


@given(st.lists(_VALID, min_size=1, max_size=8), st.sampled_from([",", ", ", " ,"]))
def test_a_list_of_devices_parses_to_one_entry_each_in_order(devices, separator):
    assert parse_devices(separator.join(devices)) == tuple(d.lower() for d in devices)


@given(
    st.lists(_VALID, max_size=3),
    st.text(min_size=1, max_size=12).filter(lambda t: "," not in t and t.strip().lower() not in _OK),
)
def test_any_other_token_is_an_error_that_names_it(devices, bad):
    with pytest.raises(DeviceError, match="unknown device"):
        parse_devices(",".join([*devices, bad]))


def test_auto_is_alone_and_means_the_cpu_without_cuda():
    assert parse_devices("auto") == ("auto",)
    with pytest.raises(DeviceError):
        parse_devices("auto,cpu")
    assert resolve_devices("auto") == [torch.device("cpu")]


def test_cpu_may_repeat_and_cuda_without_a_gpu_is_refused():
    assert resolve_devices("cpu,cpu") == [torch.device("cpu")] * 2
    assert resolve_devices(("cpu",)) == [torch.device("cpu")]
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA device is available"):
            resolve_devices("cpu,cuda:1")
