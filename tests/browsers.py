"""Debian's headless Chromium through Selenium, for the tests of what a person sees in a browser.

A missing browser skips these tests with the command that installs it; CI installs the browser and
sets $PRODSEARCH_REQUIRE_BROWSER (``.ci/run``), where a missing one fails them instead."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Debian's paths; the variables point elsewhere (another build, or a missing path to try the skip).
CHROMIUM = Path(os.environ.get("PRODSEARCH_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("PRODSEARCH_CHROMEDRIVER", "/usr/bin/chromedriver"))


def require_chromium() -> None:
    """Skip (fail where $PRODSEARCH_REQUIRE_BROWSER is set, as in CI) unless Chromium and its driver are there."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        reason = f"the browser test needs {' and '.join(missing)}: apt-get install -y chromium chromium-driver"
        if os.environ.get("PRODSEARCH_REQUIRE_BROWSER"):
            pytest.fail(f"{reason} (PRODSEARCH_REQUIRE_BROWSER is set)")
        pytest.skip(reason)


@contextlib.contextmanager
def headless_chromium(width: int, height: int) -> Iterator:
    """A Chromium window of ``width`` x ``height`` that keeps the console log (``get_log("browser")``)."""
    require_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}",
                "--disable-gpu", "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
