"""Cost estimates from the editable price table: GPUs included in G2/A2/A3 prices, billed per GPU on N1."""

from __future__ import annotations

import json
import logging

import pytest

from detection_pipeline.pricing import PRICES_PATH, CostEstimate, PriceTable, estimate_cost, load_prices

TABLE = PriceTable(
    region="test-region",
    machines={
        "g2-standard-8": {"usd_per_hour": 0.8, "gpu_included": True, "gpu_type": "nvidia-l4", "gpu_count": 1},
        "n1-standard-8": {"usd_per_hour": 0.4, "gpu_included": False},
        "local": {"usd_per_hour": 0.07, "gpu_included": True},
    },
    gpus={"nvidia-l4": 0.5, "nvidia-tesla-t4": 0.35},
)


def test_gpus_included_in_the_machine_price_are_not_billed_twice():
    estimate = estimate_cost("g2-standard-8", "nvidia-l4", 1, [3600, 1800], prices=TABLE)
    assert estimate == CostEstimate(machine_hours=1.5, gpu_hours=1.5, cost_usd=pytest.approx(1.5 * 0.8))


def test_gpus_attached_to_a_general_purpose_machine_are_billed_per_gpu():
    estimate = estimate_cost("n1-standard-8", "nvidia-tesla-t4", 2, [1800, 1800, 3600], prices=TABLE)
    assert estimate.machine_hours == 2.0
    assert estimate.gpu_hours == 4.0
    assert estimate.cost_usd == pytest.approx(2.0 * 0.4 + 4.0 * 0.35)
    assert estimate.warnings == ()


def test_no_gpu_means_machine_hours_only():
    for gpu_type, gpu_count in ((None, 1), ("nvidia-tesla-t4", 0), ("", 2)):
        estimate = estimate_cost("n1-standard-8", gpu_type, gpu_count, [7200], prices=TABLE)
        assert (estimate.gpu_hours, estimate.cost_usd) == (0.0, pytest.approx(0.8))


def test_the_embedded_default_is_billed_for_its_machine_and_never_for_a_gpu():
    estimate = estimate_cost("local", "nvidia-l4", 1, [1800.0, 1800.0], prices=TABLE)
    assert (estimate.cost_usd, estimate.warnings) == (pytest.approx(0.07), ())


def test_an_empty_run_costs_zero():
    assert estimate_cost("g2-standard-8", "nvidia-l4", 1, [], prices=TABLE) == CostEstimate(0.0, 0.0, 0.0)


def test_unknown_types_give_a_null_cost_and_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="detection_pipeline.pricing"):
        machine = estimate_cost("z9-mega-1", "nvidia-l4", 1, [3600], prices=TABLE)
        gpu = estimate_cost("n1-standard-8", "nvidia-b300", 1, [3600], prices=TABLE)
    assert machine.cost_usd is None and machine.machine_hours == 1.0
    assert machine.warnings == ("no price for machine type 'z9-mega-1' in test-region: cost unknown",)
    assert gpu.cost_usd is None and gpu.gpu_hours == 1.0
    assert gpu.warnings == ("no price for GPU type 'nvidia-b300' in test-region: cost unknown",)
    assert "z9-mega-1" in caplog.text and "nvidia-b300" in caplog.text


def test_a_configuration_that_contradicts_the_machine_is_priced_as_the_machine_with_warnings():
    estimate = estimate_cost("g2-standard-8", "nvidia-tesla-t4", 2, [3600], prices=TABLE)
    assert estimate.cost_usd == pytest.approx(0.8)
    assert estimate.warnings == (
        "g2-standard-8 carries nvidia-l4, not nvidia-tesla-t4: priced as g2-standard-8",
        "g2-standard-8 has 1 GPU(s), fewer than the 2 requested",
    )


def test_the_shipped_price_table_is_consistent():
    prices = load_prices()
    assert prices.region == "us-central1"
    # The embedded default shows a real cost: its machine is priced like a comparable 2-vCPU cloud VM.
    assert prices.machines["local"]["gpu_included"] is True
    assert 0.01 < prices.machines["local"]["usd_per_hour"] < prices.machines["n1-standard-4"]["usd_per_hour"]
    for name, machine in prices.machines.items():
        accelerator_optimized = name.split("-")[0] in {"g2", "a2", "a3"}
        assert machine["gpu_included"] is (accelerator_optimized or name == "local"), name
        if accelerator_optimized:
            assert machine["gpu_type"] in prices.gpus and machine["gpu_count"] >= 1, name
    for gpu in ("nvidia-l4", "nvidia-tesla-t4", "nvidia-tesla-a100", "nvidia-a100-80gb", "nvidia-h100-80gb"):
        assert prices.gpus[gpu] > 0
    # The default configuration (g2-standard-8 with one L4) is priced by the machine alone.
    assert (
        estimate_cost("g2-standard-8", "nvidia-l4", 1, [3600]).cost_usd
        == prices.machines["g2-standard-8"]["usd_per_hour"]
    )


def test_a_malformed_price_table_names_the_file(tmp_path):
    data = json.loads(PRICES_PATH.read_text())
    data["machines"]["g2-standard-8"]["gpu_included"] = "yes"
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(data))
    with pytest.raises(
        ValueError, match=rf"invalid price table {path}: machine 'g2-standard-8': gpu_included"
    ):
        load_prices(path)
    path.write_text("{")
    with pytest.raises(ValueError, match="invalid price table"):
        load_prices(path)


SPOT = PriceTable(
    region="test-region",
    machines=TABLE.machines,
    gpus=TABLE.gpus,
    spot_machines={"g2-standard-8": 0.3, "n1-standard-8": 0.1},
    spot_gpus={"nvidia-tesla-t4": 0.12},
)


def test_spot_runs_are_priced_at_the_spot_rates_with_the_gpus_included_as_on_demand():
    g2 = estimate_cost("g2-standard-8", "nvidia-l4", 1, [3600], spot=True, prices=SPOT)
    assert g2.cost_usd == pytest.approx(0.3)
    n1 = estimate_cost("n1-standard-8", "nvidia-tesla-t4", 2, [3600], spot=True, prices=SPOT)
    assert n1.cost_usd == pytest.approx(0.1 + 2 * 0.12)


def test_a_machine_or_gpu_without_a_spot_price_gives_no_cost_and_says_so():
    missing = estimate_cost("local", None, 0, [3600], spot=True, prices=SPOT)
    assert missing.cost_usd is None and "no spot price for machine type 'local'" in missing.warnings[0]
    no_gpu = estimate_cost("n1-standard-8", "nvidia-l4", 1, [3600], spot=True, prices=SPOT)
    assert no_gpu.cost_usd is None and "no spot price for GPU type 'nvidia-l4'" in no_gpu.warnings[0]


def test_the_shipped_table_has_a_spot_price_below_on_demand_for_every_spot_entry():
    prices = load_prices()
    assert prices.spot_machines and prices.spot_gpus
    for name, price in prices.spot_machines.items():
        assert price < prices.machines[name]["usd_per_hour"], name
    for name, price in prices.spot_gpus.items():
        assert price < prices.gpus[name], name
