"""The README's test command passes on a fresh machine: a missing browser skips its tests with the
reason (and fails them where CI asks for it), and the tests on real photos run on the photos the
tests carry, without the Grocery Store dataset beside the project."""

from __future__ import annotations

from pathlib import Path

import browsers
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_a_missing_browser_skips_with_the_command_that_installs_it(monkeypatch, tmp_path):
    monkeypatch.setattr(browsers, "CHROMIUM", tmp_path / "chromium")
    monkeypatch.delenv("PRODSEARCH_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match=rf"needs {tmp_path / 'chromium'}: apt-get install -y chromium"):
        browsers.require_chromium()


def test_a_missing_browser_fails_where_ci_requires_it(monkeypatch, tmp_path):
    monkeypatch.setattr(browsers, "CHROMEDRIVER", tmp_path / "chromedriver")
    monkeypatch.setenv("PRODSEARCH_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match=r"needs .*chromedriver: .*\(PRODSEARCH_REQUIRE_BROWSER is set\)"):
        browsers.require_chromium()


def test_ci_installs_the_browser_and_requires_it():
    script = (ROOT / ".ci" / "run").read_text()
    assert "apt-get install" in script and "export PRODSEARCH_REQUIRE_BROWSER=1" in script


def test_real_photos_are_carried_with_the_datasets_licence(real_photos):
    carried = ROOT / "tests" / "data" / "grocery-store"
    assert all(p.is_relative_to(carried) and p.stat().st_size > 0 for p in real_photos)
    assert len({p.parent.name for p in real_photos}) >= 10  # spread over classes, not one SKU's photos
    assert "MIT License" in (carried / "LICENSE").read_text()
    assert sum(p.stat().st_size for p in real_photos) < 1_500_000
