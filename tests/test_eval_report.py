"""The static HTML evaluation report (``prodsearch eval --report``), from a hand-made EvalReport: no
model, no browser (tests/test_eval_report_browser.py opens it in Chromium)."""

from __future__ import annotations

import dataclasses
import html
import re
import shutil
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reporting import BROKEN_CATALOG_SKU, DOMINANT, SCRIPT_SKU, build_report

from prodsearch.eval.evaluate import EvalReport
from prodsearch.eval.html_report import write_report


class Links(HTMLParser):
    """Every src and href of a page, and every element id."""

    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.tags: Counter = Counter()

    def handle_starttag(self, tag, attrs):
        self.tags[tag] += 1
        for name, value in attrs:
            if name in ("src", "href"):
                self.links.append(value)
            elif name == "id":
                self.ids.add(value)


def parse(page: Path) -> Links:
    links = Links()
    links.feed(page.read_text(encoding="utf-8"))
    return links


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def galleries(text: str) -> list[str]:
    """The kind of each query gallery, in page order."""
    return re.findall(r'<div class="gallery ([a-z-]+)">', text)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> EvalReport:
    return build_report(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def page(report, tmp_path_factory) -> Path:
    return write_report(report, tmp_path_factory.mktemp("out") / "report", max_galleries=100)


def test_every_link_is_relative_and_there(page):
    assert page.name == "index.html" and page.is_file()
    links = parse(page)
    assert links.links
    for link in links.links:
        assert "://" not in link and not link.startswith(("/", "data:", "file:", "//")), link
        if link.startswith("#"):
            assert link[1:] in links.ids, link
        else:
            assert (page.parent / link).is_file(), link
    text = page.read_text(encoding="utf-8")
    assert links.tags["script"] == 0 and links.tags["link"] == 0  # no JavaScript, no external CSS or fonts
    assert "http:" not in text and "https:" not in text and "url(" not in text and "@import" not in text


def test_headline(page, report):
    text = page.read_text(encoding="utf-8")
    assert f'<span class="value" id="top1">{report.top1:.1%}</span>' in text
    assert f"{report.top5:.1%}" in text
    for lv in report.levels:
        assert f"category level {lv.level}" in text
    assert "products top-1" in text
    s = report.open_set
    assert "score &ge; 0.5" in text and "DIR@FAR 1%" in text and "OpenAUC" in text and "AUROC" in text
    assert f"<td>{s.at_threshold.false_accept_rate:.1%}</td>" in text
    assert f"<td>{s.unknown}</td>" in text
    for rule in ("score", "margin", "ratio"):
        assert f"<td>{rule}</td>" in text
    for png in ("categories.png", "scores.png", "dir_far.png"):
        assert (page.parent / "img" / png).stat().st_size > 1000
        assert f'src="img/{png}"' in text


def test_data_is_escaped(page):
    text = page.read_text(encoding="utf-8")
    assert "<script" not in text.lower()
    assert html.escape(SCRIPT_SKU) in text
    assert "Product <b>" not in text and "Product &lt;b&gt;3&lt;/b&gt; &amp; co" in text


def test_unreadable_photos_become_a_placeholder(page, report):
    text = page.read_text(encoding="utf-8")
    first = text.index('<div class="gallery ')
    # the worst answer (truth not in the top 5, the highest score) is the one with the text-file photo
    assert re.search(r'<img class="thumb missing" src="img/unreadable.jpg"', text[first:first + 600])
    placeholder = Image.open(page.parent / "img" / "unreadable.jpg")
    assert np.asarray(placeholder.convert("L")).mean() > 150  # grey, not black
    assert f"catalog photo of {BROKEN_CATALOG_SKU}" in text
    assert not list((page.parent / "img").glob("c-5.jpg"))  # sku-04's image id: never made from a text file


def test_confusions_most_frequent_first(page, report):
    text = page.read_text(encoding="utf-8")
    rows = re.findall(r'<tr class="confusion"><td class="num count">(\d+)</td>(.*?)</tr>', text)
    pairs = Counter((o.truth, o.ranked[0]) for o in report.outcomes if not o.correct)
    assert len(rows) == min(12, len(pairs))
    count, cells = rows[0]
    assert int(count) == pairs[DOMINANT] == max(pairs.values()) > sorted(pairs.values())[-2]
    assert cells.index(DOMINANT[0]) < cells.index(DOMINANT[1])
    assert [int(c) for c, _ in rows] == sorted((int(c) for c, _ in rows), reverse=True)
    assert cells.count('<img class="thumb small"') == 2 + min(3, pairs[DOMINANT])


def test_worst_queries_first_then_unknown_photos(report, tmp_path):
    page = write_report(report, tmp_path / "out", max_galleries=500)
    text = page.read_text(encoding="utf-8")
    kinds = galleries(text)
    wrong = sum(not o.correct for o in report.outcomes)
    accepted = sum(o.decision.accepted for o in report.unknown_outcomes)
    rejected = sum(o.correct and not o.decision.accepted for o in report.outcomes)
    assert accepted and rejected
    assert kinds == ["wrong"] * wrong + ["false-accept"] * accepted + ["false-reject"] * rejected
    assert "not in the catalog, but accepted" in text
    truth_shown = sum(o.truth in o.ranked[:5] for o in report.outcomes if not o.correct)
    assert text.count('<li class="match right">') == truth_shown + rejected
    # wrong answers: truth not in the top 5 first, then by rank; the surest wrong answer first within a rank
    order = [o for o in report.outcomes if not o.correct]
    order.sort(key=lambda o: (-(o.ranked.index(o.truth) if o.truth in o.ranked else 99), -o.score))
    shown = re.findall(r'<span class="score">([0-9.]+)</span><span class="sku">1\. ', text)[:wrong]
    assert shown == [f"{o.score:.3f}" for o in order]


def test_bounded_whatever_the_number_of_queries(tmp_path):
    report = build_report(tmp_path / "data", n_known=300, n_skus=60)
    page = write_report(report, tmp_path / "out", max_galleries=20)
    text = page.read_text(encoding="utf-8")
    assert len(galleries(text)) == 20
    assert "20 better categories are not shown" in text
    size = folder_size(page.parent)
    assert size < 2_000_000, size
    images = list((page.parent / "img").iterdir())
    assert len(images) <= 20 * 6 + 12 * 5 + 4
    for path in images:
        if path.suffix == ".jpg":
            assert max(Image.open(path).size) <= 160


def test_rerun_into_the_same_folder_stays_bounded(report, tmp_path):
    out = tmp_path / "out"
    write_report(report, out, max_galleries=40)
    first = sorted(p.name for p in (out / "img").iterdir())
    size = folder_size(out)
    (out / "img" / "q-99999.jpg").write_bytes(b"left by an older report")
    write_report(report, out, max_galleries=40)
    assert sorted(p.name for p in (out / "img").iterdir()) == first
    assert folder_size(out) == size
    write_report(report, out, max_galleries=3)
    assert len(galleries((out / "index.html").read_text(encoding="utf-8"))) == 3
    assert folder_size(out) < size
    for link in parse(out / "index.html").links:
        assert link.startswith("#") or (out / link).is_file()


def test_only_a_new_empty_or_earlier_report_folder_is_written(report, tmp_path):
    """The page and the stale images are replaced only in a folder provably a report of ours."""
    from prodsearch.eval.report_folder import GENERATOR, ReportDirError

    empty = tmp_path / "empty"
    empty.mkdir()
    page = write_report(report, empty, max_galleries=3)
    assert GENERATOR in page.read_text(encoding="utf-8")
    older = page.read_text(encoding="utf-8").replace(GENERATOR, "")  # a report from before the marker
    page.write_text(older, encoding="utf-8")
    write_report(report, empty, max_galleries=3)

    site = tmp_path / "site"
    shutil.copytree(empty, site)
    (site / "index.html").write_text("<html>the shop's own page</html>")
    (site / "img" / "q-77.jpg").write_bytes(b"a photo of the shop's")
    with pytest.raises(ReportDirError, match="is not empty and not an earlier prodsearch report"):
        write_report(report, site)
    assert (site / "img" / "q-77.jpg").read_bytes() == b"a photo of the shop's"
    (site / "index.html").write_text(older, encoding="utf-8")
    (site / "img" / "logo.svg").write_text("<svg/>")  # a name no report writes
    with pytest.raises(ReportDirError, match=r"\(it holds img, index\.html\)"):
        write_report(report, site)
    assert (site / "img" / "logo.svg").is_file() and (site / "index.html").read_text(encoding="utf-8") == older


def test_without_open_set_categories_or_answers(report, tmp_path):
    plain = dataclasses.replace(report, open_set=None, unknown_outcomes=[], categories=[], levels=[], products=None,
                                outcomes=[dataclasses.replace(o, decision=None) for o in report.outcomes])
    page = write_report(plain, tmp_path / "plain", title="Plain <run>")
    text = page.read_text(encoding="utf-8")
    assert "<title>Plain &lt;run&gt;</title>" in text
    assert "Products not in the catalog" not in text and "No query photo has a category." in text
    assert not (page.parent / "img" / "dir_far.png").exists() and (page.parent / "img" / "scores.png").exists()
    assert set(galleries(text)) == {"wrong"}

    empty = write_report(EvalReport(n=0, top1=0.0, top5=0.0), tmp_path / "empty")
    text = empty.read_text(encoding="utf-8")
    assert "No wrong answers." in text and galleries(text) == []


def test_gallery_budget_is_shared_fairly_between_kinds():
    from prodsearch.eval.html_report import _shares

    assert _shares([130, 45, 611], 100) == [34, 33, 33]
    assert _shares([300, 0, 0], 20) == [20, 0, 0]
    assert _shares([5, 2, 900], 100) == [5, 2, 93]  # what a small kind leaves goes to the others
    assert _shares([10, 10, 10], 7) == [3, 2, 2] and sum(_shares([10, 10, 10], 7)) == 7
    assert _shares([3, 4], 0) == [0, 0]
