"""The web front end in a real browser: ``prodsearch serve`` on a small index, driven by headless Chromium.

It checks what a person sees: the search page finds the SKU of a customer photo (thumbnail loaded,
best match highlighted), the category filter re-runs the search, the error and "not in catalog"
states, a phone-width layout without horizontal scroll, the catalog page (filters in the URL, the
product dialog), and that the server stops cleanly on SIGTERM. A screenshot of the search page goes
to $PRODSEARCH_SCREENSHOT if set (e.g. docs/serve-search.png), else into the test's tmp folder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import product_image, snapshot, write_csv, write_folder_catalog
from browsers import headless_chromium, require_chromium
from serving import get, server

pytestmark = pytest.mark.slow

WAIT = 60  # seconds for the page to show an answer (the first search warms the model)

# sku, name, category: two top-level categories, one SKU with a space and a '#' (URL-encoding).
PRODUCTS = [("apple-granny", "Granny Smith apple", "Fruit/Apple"),
            ("apple-gala", "Gala apple", "Fruit/Apple"),
            ("lime", "Lime", "Fruit/Lime"),
            ("oat milk #2", "Oat milk", "Packages/Milk"),
            ("soy-milk", "Soy milk", "Packages/Milk"),
            ("orange-juice", "Orange juice", "Packages/Juice")]
QUERY_SKU = "apple-granny"  # the query photo is a snapshot of product 0



@pytest.fixture(scope="module")
def site(tmp_path_factory, embedder):
    """A 6-SKU index (one SKU with 2 photos) served by ``prodsearch serve`` on a free loopback port."""
    from prodsearch.indexer import build_index

    require_chromium()  # before the slow part
    root = tmp_path_factory.mktemp("browser")
    folders = [f"p{i}" for i in range(len(PRODUCTS))]  # image folders; the SKUs come from the CSV
    write_folder_catalog(root / "images", folders)
    product_image(5001).save(root / "images" / "p5" / "extra.jpg")
    rows = [{"image": f"images/{folder}/{folder}_0.jpg", "sku": sku, "name": name, "category": category}
            for folder, (sku, name, category) in zip(folders, PRODUCTS)]
    rows.append({"image": "images/p5/extra.jpg", "sku": PRODUCTS[5][0], "name": PRODUCTS[5][1],
                 "category": PRODUCTS[5][2]})
    catalog = write_csv(root / "catalog.csv", rows)
    build_index(catalog, root / "idx", model=embedder, num_workers=0)
    snapshot(product_image(0), seed=0).save(root / "query.jpg", quality=90)
    snapshot(product_image(0), seed=7).save(root / "query2.jpg", quality=90)
    (root / "not-a-photo.jpg").write_text("hello, I am text\n")

    log_path = root / "serve.log"
    with server(root / "idx", log_path, "--host", "127.0.0.1") as (proc, base):
        yield {"base": base, "root": root, "proc": proc,
               "log": lambda: log_path.read_text(errors="replace")[-3000:]}


@pytest.fixture(scope="module")
def browser():
    with headless_chromium(1100, 800) as driver:
        yield driver


def set_viewport(driver, width: int, height: int):
    """Size the window so that the page itself gets width x height (headless Chromium keeps room for
    a browser frame)."""
    driver.set_window_size(width, height)
    inner = js(driver, "return [window.innerWidth, window.innerHeight]")
    if inner != [width, height]:
        driver.set_window_size(2 * width - inner[0], 2 * height - inner[1])


def wait_for(driver, condition, timeout: float = WAIT, message: str = ""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(d), message)


def js(driver, script: str, *args):
    return driver.execute_script(script, *args)


def results(driver) -> list[dict]:
    """The result list as the page shows it, read in one go (the list may be re-rendered meanwhile)."""
    return js(driver, """return Array.from(document.querySelectorAll('#results .result')).map(li => ({
        sku: li.querySelector('.sku').textContent, category: li.querySelector('.category').textContent,
        best: li.classList.contains('best'), score: li.querySelector('.score-value').textContent}));""")


def script_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e.get("source") == "javascript"]


def no_horizontal_scroll(driver) -> bool:
    return js(driver, "return document.documentElement.scrollWidth <= document.documentElement.clientWidth")


def open_search_page(driver, site):
    from selenium.webdriver.common.by import By

    driver.get(site["base"] + "/")
    wait_for(driver, lambda d: "products" in d.find_element(By.ID, "index-summary").text, 15, "no index summary")
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#category option")) > 1, 15, "no categories")


def search_photos(driver, *paths: Path):
    from selenium.webdriver.common.by import By

    js(driver, "document.getElementById('results').replaceChildren()")
    driver.find_element(By.ID, "photo").send_keys("\n".join(str(p) for p in paths))
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#results .result")
             or d.find_element(By.ID, "error").is_displayed(), message="no results and no error")


def test_search_page_finds_the_product(site, browser, tmp_path):
    from selenium.webdriver.common.by import By

    set_viewport(browser, 1100, 800)
    open_search_page(browser, site)
    summary = browser.find_element(By.ID, "index-summary").text
    assert "6 products · 7 images · generation" in summary
    options = [o.get_attribute("value") for o in browser.find_elements(By.CSS_SELECTOR, "#category option")]
    assert options[0] == "" and {"Fruit", "Fruit/Apple", "Fruit/Lime", "Packages", "Packages/Milk"} <= set(options)
    assert "Fruit/Apple (2)" in browser.find_element(By.ID, "category").text
    assert browser.find_element(By.ID, "top_k").get_attribute("value") == "5"
    button = browser.find_element(By.ID, "search-button")
    assert button.text == "Search" and not button.is_enabled()  # nothing to search "again" yet

    search_photos(browser, site["root"] / "query.jpg")
    assert button.text == "Search again" and button.is_enabled()
    assert not browser.find_element(By.ID, "error").is_displayed(), browser.find_element(By.ID, "error").text
    shown = results(browser)
    assert shown[0]["sku"] == QUERY_SKU, shown
    assert len(shown) == 5
    assert shown[0]["best"] and not any(r["best"] for r in shown[1:]), shown
    assert not browser.find_element(By.ID, "not-found").is_displayed()
    scores = [float(r["score"]) for r in shown]
    assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1.0001
    first = browser.find_element(By.CSS_SELECTOR, "#results .result")
    thumb = first.find_element(By.CSS_SELECTOR, "img.thumb")
    assert thumb.get_attribute("src").endswith("?size=160")
    wait_for(browser, lambda d: js(d, "return arguments[0].complete && arguments[0].naturalWidth > 0", thumb), 15,
             "the first result's thumbnail did not load")
    bar = first.find_element(By.CSS_SELECTOR, ".score-fill").value_of_css_property("width")
    track = first.find_element(By.CSS_SELECTOR, ".score-bar").value_of_css_property("width")
    assert abs(float(bar[:-2]) / float(track[:-2]) - min(1.0, scores[0])) < 0.02
    timings = browser.find_element(By.ID, "timings").text
    assert "ms (decode" in timings and "embed" in timings and "1 photo · generation" in timings
    assert len(browser.find_elements(By.CSS_SELECTOR, "#preview img")) == 1
    assert browser.find_element(By.ID, "results-region").get_attribute("aria-live") == "polite"

    shot = Path(os.environ.get("PRODSEARCH_SCREENSHOT") or tmp_path / "serve-search.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(shot)), f"could not write the screenshot {shot}"
    assert script_errors(browser) == []


def test_category_filter_reruns_the_search(site, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    open_search_page(browser, site)
    search_photos(browser, site["root"] / "query.jpg")
    assert results(browser)[0]["sku"] == QUERY_SKU
    Select(browser.find_element(By.ID, "category")).select_by_value("Packages")
    wait_for(browser, lambda d: (r := results(d)) and all(x["category"].startswith("Packages/") for x in r),
             message="changing the category did not re-run the search")
    assert {r["sku"] for r in results(browser)} == {"oat milk #2", "soy-milk", "orange-juice"}
    Select(browser.find_element(By.ID, "category")).select_by_value("Fruit/Apple")
    wait_for(browser, lambda d: {r["sku"] for r in results(d)} == {"apple-granny", "apple-gala"})
    assert results(browser)[0]["sku"] == QUERY_SKU
    assert script_errors(browser) == []


def test_several_photos_and_the_error_state(site, browser):
    from selenium.webdriver.common.by import By

    open_search_page(browser, site)
    search_photos(browser, site["root"] / "query.jpg", site["root"] / "query2.jpg")
    assert results(browser)[0]["sku"] == QUERY_SKU
    assert "2 photos" in browser.find_element(By.ID, "timings").text
    assert len(browser.find_elements(By.CSS_SELECTOR, "#preview img")) == 2

    search_photos(browser, site["root"] / "not-a-photo.jpg")
    error = browser.find_element(By.ID, "error")
    wait_for(browser, lambda d: error.is_displayed(), 15, "no error shown for a file that is not a photo")
    assert error.get_attribute("role") == "alert"
    # The page shows the server's own message: ask the server the same question.
    boundary = "prodsearch-test"
    request = urllib.request.Request(site["base"] + "/v1/search", method="POST", data=(
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"not-a-photo.jpg\"\r\n"
        f"Content-Type: image/jpeg\r\n\r\nhello, I am text\n\r\n--{boundary}--\r\n").encode(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(request, timeout=30)
    status, body = answer.value.code, json.loads(answer.value.read())
    assert 400 <= status < 500 and error.text.split() == body["error"].split(), (error.text, body)
    assert results(browser) == []
    # The refused file leaves no broken preview behind, and nothing to "search again".
    wait_for(browser, lambda d: not d.find_element(By.ID, "preview").is_displayed(), 15, "the refused photo's preview stayed")
    assert browser.find_elements(By.CSS_SELECTOR, "#preview li") == []
    button = browser.find_element(By.ID, "search-button")
    assert button.text == "Search" and not button.is_enabled()
    assert not browser.find_element(By.ID, "dropzone").get_attribute("class").count("has-photos")


def serving(site, generation: int) -> None:
    """Wait until the server answers from ``generation`` (it refreshes every second)."""
    deadline = time.monotonic() + WAIT
    while json.loads(get(f"{site['base']}/v1/index")[1])["serving_generation"] < generation:
        assert time.monotonic() < deadline, f"the server did not load generation {generation}"
        time.sleep(0.2)


def test_not_in_catalog_and_unreachable_server(site, browser):
    """A photo the index's "not in catalog" rule rejects (a rule stored while the server runs), and
    no server at all."""
    from selenium.webdriver.common.by import By

    from prodsearch.indexer.lifecycle import set_rejection
    from prodsearch.indexer.rejection import RejectRule

    open_search_page(browser, site)
    serving(site, set_rejection(site["root"] / "idx", RejectRule("score", 0.99)))
    try:
        search_photos(browser, site["root"] / "query.jpg")
        notice = browser.find_element(By.ID, "not-found")
        assert notice.is_displayed() and "below this shop's threshold of 0.990" in notice.text, notice.text
        assert "Granny Smith apple" in notice.text  # the closest product, by name
        assert browser.find_element(By.ID, "results-heading").text == "Closest products"
        shown = results(browser)
        assert shown[0]["sku"] == QUERY_SKU and not any(r["best"] for r in shown)
    finally:
        serving(site, set_rejection(site["root"] / "idx", None))

    js(browser, "window.fetch = () => Promise.reject(new TypeError('Failed to fetch'));")
    search_photos(browser, site["root"] / "query.jpg")
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed() and "Could not reach the server" in error.text
    assert not browser.find_element(By.ID, "not-found").is_displayed() and results(browser) == []
    assert script_errors(browser) == []


def test_phone_width_has_no_horizontal_scroll(site, browser):
    from selenium.webdriver.common.by import By

    set_viewport(browser, 390, 844)
    try:
        open_search_page(browser, site)
        assert js(browser, "return window.innerWidth") == 390
        assert no_horizontal_scroll(browser)
        search_photos(browser, site["root"] / "query.jpg")
        assert results(browser)[0]["sku"] == QUERY_SKU
        assert no_horizontal_scroll(browser), js(browser, "return document.documentElement.scrollWidth")
        browser.get(site["base"] + "/catalog")
        wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".product-card")) == 6, 15)
        assert no_horizontal_scroll(browser), js(browser, "return document.documentElement.scrollWidth")
    finally:
        set_viewport(browser, 1100, 800)


def test_catalog_page(site, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    def cards(d):
        return js(d, "return Array.from(document.querySelectorAll('.product-card')).map(c => c.dataset.sku)")

    browser.get(site["base"] + "/catalog")
    wait_for(browser, lambda d: len(cards(d)) == 6, 15, "no product cards")
    assert browser.find_element(By.ID, "range").text == "items 1–6 of 6"
    assert browser.find_element(By.ID, "next").get_attribute("disabled") is not None
    card = browser.find_element(By.CSS_SELECTOR, f".product-card[data-sku='{PRODUCTS[5][0]}']")
    assert "2 images" in card.text and PRODUCTS[5][1] in card.text and PRODUCTS[5][2] in card.text
    thumb = card.find_element(By.CSS_SELECTOR, "img.thumb")
    wait_for(browser, lambda d: js(d, "return arguments[0].complete && arguments[0].naturalWidth > 0", thumb), 15)

    browser.find_element(By.ID, "q").send_keys("milk")
    wait_for(browser, lambda d: sorted(cards(d)) == ["oat milk #2", "soy-milk"], 15, "the search box did not filter")
    assert "q=milk" in browser.current_url
    browser.find_element(By.CSS_SELECTOR, ".product-card[data-sku='oat milk #2']").click()
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#details .gallery img.thumb"), 15, "no details")
    details = browser.find_element(By.ID, "details")
    assert details.is_displayed() and "oat milk #2" in details.text and "Packages/Milk" in details.text
    gallery = details.find_element(By.CSS_SELECTOR, ".gallery img.thumb")
    wait_for(browser, lambda d: js(d, "return arguments[0].complete && arguments[0].naturalWidth > 0", gallery), 15)
    browser.switch_to.active_element.send_keys(Keys.ESCAPE)
    wait_for(browser, lambda d: not js(d, "return document.getElementById('details').open"), 5, "Escape did not close")

    browser.get(site["base"] + "/catalog?category=Fruit")  # a linked page: the state comes from the URL
    wait_for(browser, lambda d: sorted(cards(d)) == ["apple-gala", "apple-granny", "lime"], 15)
    wait_for(browser, lambda d: d.find_element(By.ID, "category").get_attribute("value") == "Fruit", 5)
    assert script_errors(browser) == []


def test_server_stops_on_sigterm(site):
    proc = site["proc"]
    assert proc.poll() is None, site["log"]()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"prodsearch serve did not stop within 30 s of SIGTERM:\n{site['log']()}")
    assert code == 0, f"prodsearch serve exited with {code} on SIGTERM, not 0:\n{site['log']()}"
