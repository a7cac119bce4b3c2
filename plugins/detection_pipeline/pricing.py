"""Estimated cost of a run from an editable price table (prices.json beside this module).

A shard runs in one pod on one machine, so the run is billed for the sum of its pods' wall times: machine
hours = sum(pod seconds) / 3600, GPU hours = machine hours x GPUs per pod. This leaves out pod scheduling,
image pulls and node idle time (an underestimate), and assumes one pod per node (a node shared by several
pods would make it an overestimate). Accelerator-optimized machines (G2, A2, A3) include their GPUs in the
machine price: those GPUs are never billed a second time.

Spot runs (`spot: true`) are priced from the table's `spot` section; the pod seconds passed in include the
attempts that did not finish (aggregate's redone_s), which a spot run pays for too.

An unknown machine or GPU type gives a null cost and a warning, never a failed run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

log = logging.getLogger(__name__)

PRICES_PATH = Path(__file__).with_name("prices.json")


@dataclass(frozen=True)
class CostEstimate:
    machine_hours: float
    gpu_hours: float
    cost_usd: float | None  # None when a price is unknown
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class PriceTable:
    region: str
    machines: dict[str, dict]
    gpus: dict[str, float]
    spot_machines: dict[str, float] = field(default_factory=dict)  # USD per hour on spot VMs
    spot_gpus: dict[str, float] = field(default_factory=dict)


@cache
def load_prices(path: Path = PRICES_PATH) -> PriceTable:
    """The price table; a malformed file is an error naming the file (it is edited by hand)."""
    try:
        data = json.loads(Path(path).read_text())
        machines, gpus = data["machines"], data["gpus"]
        for name, entry in machines.items():
            if not isinstance(entry.get("usd_per_hour"), int | float) or entry["usd_per_hour"] < 0:
                raise ValueError(f"machine {name!r}: usd_per_hour must be a non-negative number")
            if not isinstance(entry.get("gpu_included"), bool):
                raise ValueError(f"machine {name!r}: gpu_included must be true or false")
        for name, price in gpus.items():
            if not isinstance(price, int | float) or price < 0:
                raise ValueError(f"gpu {name!r}: price must be a non-negative number")
        spot = data.get("spot", {})
        spot_machines, spot_gpus = spot.get("machines", {}), spot.get("gpus", {})
        for kind, table in (("spot machine", spot_machines), ("spot gpu", spot_gpus)):
            for name, price in table.items():
                if not isinstance(price, int | float) or price < 0:
                    raise ValueError(f"{kind} {name!r}: price must be a non-negative number")
        return PriceTable(data["region"], machines, gpus, spot_machines, spot_gpus)
    except (OSError, KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ValueError(f"invalid price table {path}: {exc}") from exc


def estimate_cost(
    machine_type: str,
    gpu_type: str | None,
    gpu_count: int,
    pod_seconds: Sequence[float],
    *,
    spot: bool = False,
    prices: PriceTable | None = None,
) -> CostEstimate:
    """`spot`: priced at the table's spot rates (whether the GPUs are in the machine price stays as on demand)."""
    prices = prices or load_prices()
    tier = "spot " if spot else ""
    machine_hours = sum(pod_seconds) / 3600.0
    gpus_per_pod = gpu_count if gpu_type else 0
    gpu_hours = machine_hours * gpus_per_pod
    warnings: list[str] = []

    machine = prices.machines.get(machine_type)
    machine_price = prices.spot_machines.get(machine_type) if spot else (machine or {}).get("usd_per_hour")
    if machine is None or machine_price is None:
        warnings.append(f"no {tier}price for machine type {machine_type!r} in {prices.region}: cost unknown")
        cost = None
    else:
        cost = machine_hours * machine_price
        if machine["gpu_included"]:
            warnings += _check_included(machine_type, machine, gpu_type, gpus_per_pod)
        elif gpus_per_pod:
            gpu_price = (prices.spot_gpus if spot else prices.gpus).get(gpu_type)
            if gpu_price is None:
                warnings.append(f"no {tier}price for GPU type {gpu_type!r} in {prices.region}: cost unknown")
                cost = None
            else:
                cost += gpu_hours * gpu_price
    for warning in warnings:
        log.warning("Cost estimate: %s", warning)
    return CostEstimate(machine_hours, gpu_hours, cost, tuple(warnings))


def _check_included(machine_type: str, machine: dict, gpu_type: str | None, gpus_per_pod: int) -> list[str]:
    """The GPUs are in the machine price; say so when the configuration disagrees with the machine."""
    included_type, included_count = machine.get("gpu_type"), machine.get("gpu_count")
    if included_type is None or not gpus_per_pod:
        return []
    warnings = []
    if gpu_type != included_type:
        warnings.append(f"{machine_type} carries {included_type}, not {gpu_type}: priced as {machine_type}")
    if included_count is not None and gpus_per_pod > included_count:
        warnings.append(
            f"{machine_type} has {included_count} GPU(s), fewer than the {gpus_per_pod} requested"
        )
    return warnings
