from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from detection_pipeline.report.trends import check_workload, checks_frame, runs_frame, split_workloads
from tests.report.conftest import run_record

DAY = datetime(2026, 11, 1, tzinfo=UTC)
WORKLOAD = "a" * 64


def run(
    n: int,
    *,
    model: str = "fasterrcnn_resnet50_fpn",
    weights: str = "DEFAULT",
    ips: float | None = 10.0,
    cost: float | None = 2.0,
    workload: str | None = WORKLOAD,
    **kw,
) -> dict:
    """The n-th daily run, executed on its own logical date unless told otherwise."""
    when = DAY + timedelta(days=n)
    fields = dict(
        run_id=f"scheduled__{when.date()}",
        run_date=when.date(),
        logical_date=when,
        started_at=when + timedelta(hours=1),
        recorded_at=when + timedelta(hours=2),
        model_name=model,
        weights_id=weights,
        images_per_s=ips,
        cost_per_1000_images_usd=cost,
        workload_id=workload,
    )
    fields.update(kw)
    return run_record(**fields)


def _check(records: list[dict]):
    trended, _ = split_workloads(runs_frame(records))
    (runs,) = trended.values()
    return check_workload(runs)


def _verdicts(records: list[dict]) -> dict:
    return {c.metric: c.regressed for c in _check(records).checks}


def steady(*values: float, **kw) -> list[dict]:
    return [run(i, ips=v, **kw) for i, v in enumerate(values, start=1)]


@pytest.mark.parametrize(("latest", "regressed"), [(10.0, False), (9.7, False), (9.0, True), (13.0, False)])
def test_images_per_s_regresses_only_outside_the_noise_band(latest, regressed):
    records = [*steady(10.0, 10.2, 9.8, 10.1, 9.9), run(6, ips=latest)]
    assert _verdicts(records)["images_per_s"] is regressed


def test_a_noisy_history_widens_the_band():
    noisy = [*steady(10.0, 14.0, 7.0, 12.0, 8.0), run(6, ips=8.0)]
    assert not _verdicts(noisy)["images_per_s"]


def test_a_cost_rise_outside_the_band_is_a_regression():
    records = [run(1, cost=2.0), run(2, cost=2.0), run(3, cost=2.0), run(4, cost=2.5)]
    check = _check(records)
    (cost,) = [c for c in check.checks if c.metric == "cost_per_1000"]
    assert cost.regressed and cost.relative == pytest.approx(0.25)


def test_runtime_is_shown_but_never_judged():
    assert not _verdicts([run(1, wall_s=10.0), run(2, wall_s=10.0), run(3, wall_s=100.0)])["wall_s"]


def test_too_little_history_is_not_judged():
    check = _check([run(1, ips=10.0), run(2, ips=1.0)])
    assert not check.regressed
    assert set(checks_frame([check])["verdict"]) == {"too little history"}


def test_the_changed_version_is_named():
    records = [*steady(10.0, 10.0, 10.0), run(4, ips=7.0, torch_version="2.15.0")]
    check = _check(records)
    assert check.regressed and check.version_changes == ["torch 2.14.1 -> 2.15.0"]


def test_only_the_same_workload_is_compared():
    other = "b" * 64
    records = [*steady(10.0, 10.0, 10.0), run(4, ips=2.0, workload=other), run(5, ips=1.0, workload=other)]
    trended, one_off = split_workloads(runs_frame(records))
    assert list(trended) == [other, WORKLOAD] and one_off.empty  # most recently run first
    assert not check_workload(trended[WORKLOAD]).regressed


def test_single_runs_and_runs_without_a_workload_id_are_one_off():
    records = [run(1, workload=None), run(2, workload=None), run(3, workload="c" * 64)]
    trended, one_off = split_workloads(runs_frame(records))
    assert trended == {} and len(one_off) == 3


def test_latest_is_the_last_executed_run_so_a_backfill_counts():
    backfill = run(0, ips=5.0, run_type="backfill", started_at=DAY + timedelta(days=10), recorded_at=None)
    check = _check([*steady(10.0, 10.0, 10.0), backfill])
    assert check.latest_run == "scheduled__2026-11-01" and check.regressed


def test_missing_numbers_are_not_regressions():
    assert not _check([*steady(10.0, 10.0, 10.0), run(4, ips=None)]).regressed


def test_records_from_json_with_string_timestamps():
    record = run(1)
    as_json = {**record, "logical_date": "2026-11-02T00:00:00+00:00", "run_date": "2026-11-02", "started_at": None,
               "recorded_at": "2026-11-02T02:00:00Z"}  # fmt: skip
    frame = runs_frame([as_json, {**as_json, "run_id": "r2", "logical_date": None}])
    assert frame["when"].iloc[0] == datetime(2026, 11, 2, tzinfo=UTC) and frame["executed"].iloc[0].hour == 2


def test_a_run_without_any_date_is_a_clear_error():
    with pytest.raises(ValueError, match="neither logical_date nor run_date"):
        runs_frame([{**run(1), "logical_date": None, "run_date": None}])
