"""The HTML evaluation report in a real browser: headless Chromium opens ``index.html`` from disk
(``file://``, no server) and every picture loads, with no console error. A screenshot goes to
$PRODSEARCH_SCREENSHOT if set (e.g. docs/eval-report.png), else into the test's tmp folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from browsers import headless_chromium
from reporting import build_report

from prodsearch.eval.html_report import write_report

pytestmark = pytest.mark.slow




@pytest.fixture(scope="module")
def browser():
    with headless_chromium(1240, 1000) as driver:
        yield driver


def test_report_opens_from_disk(browser, tmp_path):
    from selenium.webdriver.common.by import By

    report = build_report(tmp_path / "data", n_known=150, n_skus=24)
    page = write_report(report, tmp_path / "report", max_galleries=30)
    browser.get(page.resolve().as_uri())
    assert browser.execute_script("return document.readyState") == "complete"

    images = browser.execute_script("""return Array.from(document.images).map(
        img => ({src: img.getAttribute('src'), ok: img.complete && img.naturalWidth > 0}));""")
    assert len(images) > 30
    assert [i["src"] for i in images if not i["ok"]] == []
    assert browser.find_element(By.ID, "top1").text == f"{report.top1:.1%}"
    assert "top-1" in browser.find_element(By.ID, "headline").text
    assert len(browser.find_elements(By.CSS_SELECTOR, ".gallery")) == 30
    assert browser.find_elements(By.CSS_SELECTOR, ".gallery .match.right img")  # the truth, framed green

    shot = Path(os.environ.get("PRODSEARCH_SCREENSHOT") or tmp_path / "eval-report.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(shot)), f"could not write the screenshot {shot}"
    severe = [e["message"] for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    assert severe == []
