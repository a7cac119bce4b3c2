from __future__ import annotations

import json
import re
from pathlib import Path

from detection_pipeline.report import build_dashboard, render_dashboard
from tests.report.conftest import EVIL
from tests.report.test_trends import run


def _figure_data(html: str, div_id: str) -> list[dict]:
    match = re.search(r'Plotly\.newPlot\(\s*"' + re.escape(div_id) + r'",\s*(\[.*?\]),\s*\{', html, re.S)
    assert match, f"no figure {div_id}"
    return json.loads(match.group(1))


def history(latest_ips: float) -> list[dict]:
    return [
        run(1, ips=10.0),
        run(2, ips=10.0, torch_version="2.15.0"),
        run(3, model="retinanet_resnet50_fpn", ips=4.0),
        run(4, ips=latest_ips, torch_version="2.15.0"),
    ]


def test_dashboard_is_written_self_contained(tmp_path: Path):
    out = tmp_path / "site" / "dashboard.html"
    assert build_dashboard(history(10.0), str(out)) == str(out)
    html = out.read_text(encoding="utf-8")
    assert html.count("window.PlotlyConfig") == 1
    assert not re.search(r"<script[^>]+src=", html)
    for chart in (
        "chart-time-images_per_s",
        "chart-time-cost_per_1000",
        "chart-time-wall_s",
        "chart-by-sdk",
        "chart-by-model",
    ):
        assert f'id="{chart}"' in html


def test_regression_is_marked_by_banner_and_chart_marker():
    html = render_dashboard(history(8.0))
    assert "REGRESSION: run scheduled__2026-11-05" in html and "images/s -20.0%" in html
    traces = _figure_data(html, "chart-time-images_per_s")
    (marker,) = [t for t in traces if t["name"] == "regression"]
    assert marker["y"] == [8.0] and marker["x"] == ["2026-11-05 00:00:00"]
    assert all(t["name"] != "regression" for t in _figure_data(html, "chart-time-cost_per_1000"))


def test_no_mark_when_within_the_threshold():
    html = render_dashboard(history(9.5))
    assert "REGRESSION" not in html and "No regression beyond 10%" in html
    assert all(t["name"] != "regression" for t in _figure_data(html, "chart-time-images_per_s"))


def test_threshold_is_respected():
    assert "REGRESSION" not in render_dashboard(history(8.0), regression_threshold=0.25)


def test_a_cost_regression_is_marked_on_the_cost_chart():
    records = [run(1, cost=2.0), run(2, cost=2.5)]
    html = render_dashboard(records)
    assert "cost per 1,000 images (USD) +25.0%" in html
    assert any(t["name"] == "regression" for t in _figure_data(html, "chart-time-cost_per_1000"))


def test_one_point_per_run_one_line_per_model_version():
    traces = _figure_data(render_dashboard(history(10.0)), "chart-time-images_per_s")
    lines = {t["name"]: t["y"] for t in traces}
    assert lines == {
        "fasterrcnn_resnet50_fpn / DEFAULT": [10.0, 10.0, 10.0],
        "retinanet_resnet50_fpn / DEFAULT": [4.0],
    }


def test_grouped_by_sdk_and_model_version():
    html = render_dashboard(history(10.0))
    by_sdk = {t["name"]: t["y"] for t in _figure_data(html, "chart-by-sdk") if t["yaxis"] == "y"}
    assert by_sdk == {
        "torch 2.14.1 / torchvision 0.29.1 / detection-engine:test": [10.0, 4.0],
        "torch 2.15.0 / torchvision 0.29.1 / detection-engine:test": [10.0, 10.0],
    }
    by_model = {t["name"]: t["y"] for t in _figure_data(html, "chart-by-model") if t["yaxis"] == "y2"}
    assert by_model == {
        "fasterrcnn_resnet50_fpn / DEFAULT": [2.0, 2.0, 2.0],
        "retinanet_resnet50_fpn / DEFAULT": [2.0],
    }


def test_first_run_of_a_model_is_said_so():
    html = render_dashboard([run(1), run(2, model="retinanet_resnet50_fpn")])
    assert "first run of retinanet_resnet50_fpn / DEFAULT: nothing to compare" in html


def test_no_runs_no_charts():
    html = render_dashboard([])
    assert "No runs recorded yet." in html and "Plotly.newPlot" not in html


def test_user_text_is_escaped():
    html = render_dashboard([run(1, run_id=EVIL, container_image=EVIL)])
    assert EVIL not in html
    assert "&lt;script&gt;" in html


def test_a_run_missing_a_metric_leaves_that_chart_empty():
    html = render_dashboard([run(1, cost=None, wall_s=None)])
    assert (
        "No run recorded cost per 1,000 images (USD)." in html and 'id="chart-time-cost_per_1000"' not in html
    )
