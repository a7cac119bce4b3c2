"""Run report and cross-run dashboard: self-contained HTML pages (plotly.js inline, images as data URIs).

Runs in the Airflow worker, so it never imports torch: charts are plotly, annotations are drawn with Pillow.
"""

from __future__ import annotations

from detection_pipeline.report.dashboard import build_dashboard, render_dashboard
from detection_pipeline.report.run_data import ReportError
from detection_pipeline.report.run_report import build_run_report, render_run_report

__all__ = ["ReportError", "build_dashboard", "build_run_report", "render_dashboard", "render_run_report"]
