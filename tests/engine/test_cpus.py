"""The decode threads follow the CPUs the process may use: affinity, cgroup quota, or the pod's CPU request."""

from __future__ import annotations

import math
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from detection_engine.cpus import cgroup_quota, cores_of_quantity, usable_cpus
from detection_engine.pipeline import PipelineOptions


def _cgroup_v2(root, text: str):
    (root / "cpu.max").write_text(text)
    return root


def _cgroup_v1(root, quota: int, period: int):
    (root / "cpu").mkdir()
    (root / "cpu" / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (root / "cpu" / "cpu.cfs_period_us").write_text(f"{period}\n")
    return root


def test_without_a_quota_the_affinity_mask_counts(tmp_path):
    assert cgroup_quota(tmp_path) is None
    assert usable_cpus(tmp_path) == len(os.sched_getaffinity(0))
    assert cgroup_quota(_cgroup_v2(tmp_path, "max 100000\n")) is None


@given(quota=st.integers(1, 64_000_000), period=st.integers(1_000, 1_000_000), v2=st.booleans())
def test_a_cgroup_quota_caps_the_count_rounded_up(tmp_path_factory, quota, period, v2):
    root = tmp_path_factory.mktemp("cg")
    root = _cgroup_v2(root, f"{quota} {period}\n") if v2 else _cgroup_v1(root, quota, period)

    assert cgroup_quota(root) == pytest.approx(quota / period)
    assert usable_cpus(root) == max(1, min(len(os.sched_getaffinity(0)), math.ceil(quota / period)))


@pytest.mark.parametrize("text", ["", "garbage", "100 0", "-1 100000"])
def test_an_unreadable_quota_is_no_quota(tmp_path, text):
    assert cgroup_quota(_cgroup_v2(tmp_path, text)) is None
    assert usable_cpus(tmp_path) == len(os.sched_getaffinity(0))


def test_v1_without_a_quota(tmp_path):
    assert cgroup_quota(_cgroup_v1(tmp_path, -1, 100000)) is None


@given(millicores=st.integers(1, 10**7))
def test_a_cpu_quantity_gives_its_whole_cores_and_at_least_one(millicores):
    cores = max(1, millicores // 1000)
    assert cores_of_quantity(f"{millicores}m") == cores
    assert cores_of_quantity(str(millicores / 1000)) == cores
    if millicores % 1000 == 0:
        assert cores_of_quantity(str(millicores // 1000)) == cores


@given(st.text(max_size=12).filter(lambda s: not s.strip().replace(".", "", 1).rstrip("m").isdigit()))
def test_anything_else_is_refused(text):
    with pytest.raises(ValueError, match="not a Kubernetes quantity of CPU"):
        cores_of_quantity(text)


def test_the_engine_decodes_on_every_usable_cpu_by_default():
    assert PipelineOptions().decode_workers == usable_cpus()
