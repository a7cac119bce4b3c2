"""Open the run report and the dashboard in Debian's headless Chromium, as a reader would, with no network.

Fails (never skips silently) when Chromium is missing: run scripts/install_browser.sh, or set
DETECTION_SKIP_BROWSER=1 to skip on purpose. Screenshots and the pages land in test-artifacts/.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from detection_pipeline.report import build_dashboard, build_run_report
from detection_pipeline.report.dashboard import short_id
from tests.report.test_dashboard import OTHER, charts, history
from tests.report.test_trends import WORKLOAD

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
)

# Every plotly div has drawn its SVG and at least one trace; returns the ids of those that have not.
_UNDRAWN_CHARTS = """
return Array.from(document.querySelectorAll('.plotly-graph-div'))
  .filter(gd => !(gd.querySelector('.main-svg') && gd.querySelectorAll('.main-svg .trace').length > 0))
  .map(gd => gd.id);
"""
_CHART_IDS = "return Array.from(document.querySelectorAll('.plotly-graph-div')).map(gd => gd.id);"
_BROKEN_IMAGES = (
    "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt);"
)
_FETCHED = "return performance.getEntriesByType('resource').map(r => r.name);"


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    if os.environ.get("DETECTION_SKIP_BROWSER") == "1":
        pytest.skip("DETECTION_SKIP_BROWSER=1")
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).exists()]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} not found: run scripts/install_browser.sh "
            "(or set DETECTION_SKIP_BROWSER=1 to skip the browser tests on purpose)",
            pytrace=False,
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: selenium-manager never runs, so nothing is downloaded.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _open_and_check(driver, page: Path, expected_charts: set[str], name: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(page.as_uri())
    WebDriverWait(driver, 30).until(lambda d: not d.execute_script(_UNDRAWN_CHARTS))
    _save_artifacts(driver, page, name)

    assert set(driver.execute_script(_CHART_IDS)) == expected_charts
    assert driver.execute_script(_UNDRAWN_CHARTS) == []
    assert driver.execute_script(_BROKEN_IMAGES) == []
    fetched = driver.execute_script(_FETCHED)
    assert all(url.startswith(("data:", "file:")) for url in fetched), f"the page fetched {fetched}"
    errors = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
    assert errors == [], f"console errors: {errors}"


def _save_artifacts(driver, page: Path, name: str) -> None:
    """A full-page screenshot and the page itself, for a person to look at after the run."""
    ARTIFACTS.mkdir(exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(int(height) + 100, 12000))
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))
    shutil.copyfile(page, ARTIFACTS / f"{name}.html")
    driver.set_window_size(1280, 1000)


def test_run_report_renders_without_errors(browser, mixed_run):
    prefix, record = mixed_run
    page = Path(build_run_report(prefix, record))
    _open_and_check(browser, page, {"chart-latency", "chart-timeline", "chart-classes"}, "run-report")
    assert browser.execute_script("return document.querySelectorAll('.gallery img').length") == 4


def test_dashboard_renders_without_errors(browser, tmp_path):
    page = Path(build_dashboard(history(7.0), str(tmp_path / "dashboard.html")))
    _open_and_check(browser, page, charts(WORKLOAD, OTHER), "dashboard")
    banner = browser.execute_script("return document.querySelector('.banner.bad').innerText")
    assert banner.startswith(f"REGRESSION: workload {short_id(WORKLOAD)}")
    # per-workload series by version: the regressed workload's chart has both torch versions drawn
    traces = browser.execute_script(
        f"return document.getElementById('chart-{short_id(WORKLOAD)}-time').data.map(t => t.name);"
    )
    assert {"regression"} < set(traces) and sum("torch 2.15.0" in t for t in traces) == 3
