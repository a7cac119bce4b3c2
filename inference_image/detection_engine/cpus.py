"""How many CPUs this process may really use, for sizing the decode threads that keep the devices fed.

`os.cpu_count()` is the machine's count: inside a container it is the whole node's, although the process may
be pinned to a few cores (cpuset) or capped by a CFS quota (a Kubernetes CPU limit). The usable count is the
smallest of the affinity mask and the cgroup quota, rounded up. A pod with a CPU request and no limit (how
the launcher asks for them, so decode is never throttled) sees neither, so the launcher also passes its request
as `--decode-workers` (`cores_of_quantity`).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
_QUANTITY = re.compile(r"^(?P<number>[0-9]+(?:\.[0-9]+)?)(?P<milli>m?)$")


def usable_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """CPUs this process can run on at once: affinity mask and cgroup quota (v2 `cpu.max`, v1 CFS), >= 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        count = os.cpu_count() or 1
    quota = cgroup_quota(cgroup_root)
    if quota is not None:
        count = min(count, math.ceil(quota))
    return max(1, count)


def cgroup_quota(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota in cores of this process's cgroup, or None when there is none (or it cannot be read)."""
    try:
        v2 = root / "cpu.max"
        if v2.is_file():
            limit, period = v2.read_text().split()[:2]
            return None if limit == "max" or int(limit) <= 0 else int(limit) / int(period)
        quota_file, period_file = root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us"
        if quota_file.is_file() and period_file.is_file():
            quota = int(quota_file.read_text())
            return None if quota <= 0 else quota / int(period_file.read_text())
    except (OSError, ValueError, ZeroDivisionError):
        return None
    return None


def cores_of_quantity(quantity: str) -> int:
    """Whole cores of a Kubernetes CPU quantity (`4`, `3.5`, `3500m`), at least 1: the decode threads of a pod."""
    match = _QUANTITY.match(str(quantity).strip())
    if match is None:
        raise ValueError(f"{quantity!r} is not a Kubernetes quantity of CPU like 4, 3.5 or 3500m")
    cores = float(match["number"]) / (1000 if match["milli"] else 1)
    return max(1, math.floor(cores))
