from __future__ import annotations

import json
import re
from pathlib import Path

from detection_pipeline.report import build_dashboard, render_dashboard
from detection_pipeline.report.dashboard import short_id
from detection_pipeline.warehouse import open_warehouse
from tests.report.conftest import EVIL
from tests.report.test_trends import WORKLOAD, run

OTHER = "b" * 64  # another workload: other inputs


def _figure_data(html: str, div_id: str) -> list[dict]:
    match = re.search(r'Plotly\.newPlot\(\s*"' + re.escape(div_id) + r'",\s*(\[.*?\]),\s*\{', html, re.S)
    assert match, f"no figure {div_id}"
    return json.loads(match.group(1))


def history(latest_ips: float) -> list[dict]:
    """Workload A: three steady runs under torch 2.14.1, then the latest under torch 2.15.0; workload B:
    two slower runs of other inputs (never compared with A); one run without a workload id (one-off)."""
    return [
        run(1, ips=10.0),
        run(2, ips=10.1),
        run(3, model="retinanet_resnet50_fpn", ips=4.0, workload=OTHER),
        run(4, ips=9.9),
        run(5, model="retinanet_resnet50_fpn", ips=4.1, workload=OTHER),
        run(6, ips=12.0, workload=None, run_type="manual"),
        run(7, ips=latest_ips, torch_version="2.15.0"),
    ]


def charts(*workloads: str) -> set[str]:
    return {f"chart-{short_id(w)}-{kind}" for w in workloads for kind in ("time", "versions")}


def test_regression_flagged_for_the_regressed_workload_only_from_a_real_warehouse(tmp_path: Path):
    warehouse = open_warehouse(f"duckdb://{tmp_path / 'w.duckdb'}")
    warehouse.ensure_tables()
    for record in history(7.0):
        warehouse.write_run_record(record)
    html = render_dashboard(warehouse.runs_frame())
    (flag,) = re.findall(r'<div class="banner bad"[^>]*>([^<]*)</div>', html)
    assert flag.startswith(f"REGRESSION: workload {short_id(WORKLOAD)}") and "images/s -30.0%" in flag
    assert "torch 2.14.1 -&gt; 2.15.0" in flag
    assert short_id(OTHER) not in flag
    traces = _figure_data(html, f"chart-{short_id(WORKLOAD)}-time")
    (marker,) = [t for t in traces if t["name"] == "regression"]
    assert marker["y"] == [7.0] and marker["x"] == ["2026-11-08 00:00:00"]
    assert all(t["name"] != "regression" for t in _figure_data(html, f"chart-{short_id(OTHER)}-time"))


def test_per_workload_series_by_version_never_mix_workloads():
    html = render_dashboard(history(10.0))
    traces = _figure_data(html, f"chart-{short_id(WORKLOAD)}-time")
    ips = {t["name"]: t["y"] for t in traces if t["yaxis"] == "y"}
    assert ips == {
        "torch 2.14.1 / torchvision 0.29.1 / detection-engine:test": [10.0, 10.1, 9.9],
        "torch 2.15.0 / torchvision 0.29.1 / detection-engine:test": [10.0],
    }
    other = {
        t["name"]: t["y"] for t in _figure_data(html, f"chart-{short_id(OTHER)}-time") if t["yaxis"] == "y"
    }
    assert other == {"torch 2.14.1 / torchvision 0.29.1 / detection-engine:test": [4.0, 4.1]}
    by_version = _figure_data(html, f"chart-{short_id(WORKLOAD)}-versions")
    assert {t["name"] for t in by_version} == set(ips)


def test_no_flag_within_the_noise_band():
    html = render_dashboard(history(9.8))
    assert "REGRESSION" not in html and "outside its history&#x27;s noise band" in html


def test_one_off_runs_are_listed_not_trended():
    html = render_dashboard(history(10.0))
    one_off = html[html.index('<section id="one-off">') : html.index('<section id="runs">')]
    assert "scheduled__2026-11-07" in one_off and "Plotly.newPlot" not in one_off
    assert set(re.findall(r'id="(chart-[^"]+)"', html)) == charts(WORKLOAD, OTHER)


def test_subtitle_spans_every_run():
    html = render_dashboard(history(10.0))
    assert "7 runs of 3 workloads, 2026-11-02 to 2026-11-08" in html


def test_dashboard_shares_plotly_beside_it(tmp_path: Path):
    out = tmp_path / "site" / "dashboard.html"
    assert build_dashboard(history(10.0), str(out)) == str(out)
    html = out.read_text(encoding="utf-8")
    (src,) = re.findall(r'<script[^>]+src="([^"]+)"', html)
    assert (out.parent / src).is_file() and "/" not in src
    assert len(html.encode()) < 500_000


def test_no_workload_ran_twice():
    html = render_dashboard([run(1), run(2, workload=OTHER)])
    assert "No workload has run twice yet" in html and "Plotly.newPlot" not in html


def test_no_runs_no_charts():
    html = render_dashboard([])
    assert "No runs recorded yet." in html and "Plotly.newPlot" not in html


def test_user_text_is_escaped():
    html = render_dashboard([run(1, run_id=EVIL, container_image=EVIL), run(2, container_image=EVIL)])
    assert EVIL not in html
    assert "&lt;script&gt;" in html


def test_a_run_missing_a_metric_is_left_out_of_that_series():
    html = render_dashboard([run(1, cost=None), run(2), run(3)])
    traces = _figure_data(html, f"chart-{short_id(WORKLOAD)}-time")
    (cost,) = [t for t in traces if t["yaxis"] == "y2"]
    assert cost["y"] == [2.0, 2.0]
