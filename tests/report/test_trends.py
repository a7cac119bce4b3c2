from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from detection_pipeline.report.trends import compare_latest, to_datetime, to_points
from tests.report.conftest import run_record

DAY = datetime(2026, 11, 1, tzinfo=UTC)


def run(
    n: int,
    *,
    model: str = "fasterrcnn_resnet50_fpn",
    weights: str = "DEFAULT",
    ips: float = 10.0,
    cost: float = 2.0,
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
    )
    fields.update(kw)
    return run_record(**fields)


def latest_change(records: list[dict], threshold: float = 0.10) -> dict:
    comparison = compare_latest(to_points(records), threshold)
    return {c.key: c for c in comparison.changes}


@pytest.mark.parametrize(
    ("latest_ips", "threshold", "regressed"),
    [(8.5, 0.10, True), (9.0, 0.10, False), (8.5, 0.20, False), (12.0, 0.10, False)],
)
def test_images_per_s_regresses_only_beyond_the_threshold(latest_ips, threshold, regressed):
    comparison = compare_latest(to_points([run(1, ips=10.0), run(2, ips=latest_ips)]), threshold)
    assert comparison.regressed is regressed
    assert (
        latest_change([run(1, ips=10.0), run(2, ips=latest_ips)], threshold)["images_per_s"].regressed
        is regressed
    )


def test_a_cost_rise_beyond_the_threshold_is_a_regression():
    changes = latest_change([run(1, cost=2.0), run(2, cost=2.3)])
    assert changes["cost_per_1000"].regressed and changes["cost_per_1000"].relative == pytest.approx(0.15)
    assert not changes["images_per_s"].regressed
    assert not latest_change([run(1, cost=2.0), run(2, cost=1.5)])["cost_per_1000"].regressed


def test_runtime_is_compared_but_never_judged():
    assert not latest_change([run(1, wall_s=10.0), run(2, wall_s=100.0)])["wall_s"].regressed


def test_previous_means_the_same_model_and_weights():
    records = [
        run(1, ips=10.0),
        run(2, ips=10.0, weights="COCO_V1"),  # same model, other weights: a different model version
        run(3, model="retinanet_resnet50_fpn", ips=1.0),
        run(4, ips=9.5),
    ]
    comparison = compare_latest(to_points(records), 0.10)
    assert comparison.previous.run_id == "scheduled__2026-11-02" and not comparison.regressed


def test_the_first_run_of_a_model_has_nothing_to_compare():
    comparison = compare_latest(to_points([run(1), run(2, model="retinanet_resnet50_fpn", ips=1.0)]), 0.10)
    assert comparison.previous is None and comparison.changes == [] and not comparison.regressed


def test_latest_is_the_last_executed_run_so_a_backfill_counts():
    backfill = run(0, ips=5.0, run_type="backfill", started_at=DAY + timedelta(days=10), recorded_at=None)
    comparison = compare_latest(to_points([run(1, ips=10.0), backfill]), 0.10)
    assert comparison.latest.run_type == "backfill" and comparison.regressed


def test_missing_numbers_are_not_regressions():
    assert not compare_latest(to_points([run(1, ips=None), run(2, ips=1.0)]), 0.10).regressed


def test_records_from_json_with_string_timestamps():
    record = run(1)
    as_json = {**record, "logical_date": "2026-11-02T00:00:00+00:00", "run_date": "2026-11-02", "started_at": None,
               "recorded_at": "2026-11-02T02:00:00Z"}  # fmt: skip
    (point,) = to_points([as_json])
    assert point.when == datetime(2026, 11, 2, tzinfo=UTC) and point.executed.hour == 2


def test_dates_and_naive_times_become_utc():
    assert to_datetime(date(2026, 1, 2)) == datetime(2026, 1, 2, tzinfo=UTC)
    assert to_datetime(datetime(2026, 1, 2, 3)) == datetime(2026, 1, 2, 3, tzinfo=UTC)
    with pytest.raises(ValueError):
        to_datetime(3.5)


def test_a_negative_threshold_is_refused():
    with pytest.raises(ValueError, match="threshold"):
        compare_latest(to_points([run(1)]), -0.1)
