"""Which devices a shard runs on: `--devices auto | cpu | cuda | cuda:N[,...]`, one model replica each.

`auto` is every visible GPU (a pod asks for `gpu_count` GPUs and is billed for all of them), else the CPU.
A list names each replica's device; a device may repeat (`cpu,cpu` lets tests run two replicas on a CPU).
Syntax is checked when the arguments are parsed (`parse_devices`); whether the devices exist is checked on
the machine that runs the shard (`resolve_devices`). Both raise `DeviceError` with the line the user sees.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

AUTO = "auto"
_TOKEN = re.compile(r"cpu|cuda(?::(\d{1,3}))?")


class DeviceError(ValueError):
    """The requested device does not exist on this machine, or the device list cannot be read."""


def parse_devices(spec: str) -> tuple[str, ...]:
    """`"cuda:0, cuda:1"` -> `("cuda:0", "cuda:1")`; `"auto"` -> `("auto",)`; anything else raises."""
    tokens = tuple(token.strip().lower() for token in str(spec).split(","))
    if tokens == (AUTO,):
        return tokens
    bad = [token for token in tokens if not _TOKEN.fullmatch(token)]
    if bad:
        raise DeviceError(
            f"unknown device {bad[0]!r} in {spec!r}; use 'auto' or a comma-separated list of cpu, cuda, cuda:N"
        )
    return tokens


def resolve_devices(spec: str | Sequence[str]) -> list[torch.device]:
    """The torch devices of a device list on this machine; `cuda` is the current CUDA device."""
    tokens = parse_devices(spec) if isinstance(spec, str) else parse_devices(",".join(spec))
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if tokens == (AUTO,):
        return [torch.device("cuda", i) for i in range(count)] or [torch.device("cpu")]
    devices = []
    for name in tokens:
        if name == "cpu":
            devices.append(torch.device("cpu"))
            continue
        if count == 0:
            raise DeviceError(f"--devices {name} was requested but no CUDA device is available")
        index = int(name.split(":")[1]) if ":" in name else torch.cuda.current_device()
        if index >= count:
            raise DeviceError(
                f"--devices {name}: this machine has {count} CUDA device(s), cuda:0..{count - 1}"
            )
        devices.append(torch.device("cuda", index))
    return devices
