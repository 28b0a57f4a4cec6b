"""``calibrate``, and rejection in ``query``, ``eval``, ``info`` and ``POST /v1/search``: through the CLI
and the HTTP API, checked against the Python API, on a small shop with the real embedder."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from click.testing import CliRunner

from conftest import product_image, snapshot, write_csv, write_folder_catalog
from prodsearch.cli import cli
from prodsearch.eval.evaluate import evaluate
from prodsearch.indexer import ProductIndex, build_index
from prodsearch.indexer.rejection import RejectRule

SOLD = [f"sku-{i}" for i in range(8)]
OTHERS = [f"other-{i}" for i in range(4)]  # products the shop does not sell


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def json_of(*args):
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def shop(tmp_path_factory, embedder):
    """8 SKUs in the index, 3 customer photos of each, and 3 photos each of 4 products it lacks."""
    root = tmp_path_factory.mktemp("open-set")
    write_folder_catalog(root / "catalog", SOLD)
    for folder, skus, first in (("queries", SOLD, 0), ("unknown", OTHERS, len(SOLD))):
        for s, sku in enumerate(skus):
            (root / folder / sku).mkdir(parents=True)
            for i in range(3):
                snapshot(product_image(1000 * (first + s)), seed=10 * s + i).save(root / folder / sku / f"{i}.jpg")
    build_index(root / "catalog", root / "built", model=embedder, num_workers=0)
    return root


@pytest.fixture
def index_dir(shop, tmp_path):
    shutil.copytree(shop / "built", tmp_path / "idx")
    return tmp_path / "idx"


def test_calibrate_stores_the_rule_that_query_eval_and_info_apply(shop, index_dir):
    data = json_of("calibrate", shop / "queries", "--index", index_dir, "--far", 0.1, "--folds", 4, "-q")
    assert data["stored"] is True and data["photos"] == 24 and data["skus"] == 8 and data["unknown"] == 24
    assert {r["rule"] for r in data["rules"]} == {"score", "margin", "ratio"}
    assert all(r["false_accept_rate"] <= 0.1 for r in data["rules"])
    chosen = data["chosen"]
    index = ProductIndex.open(index_dir)
    assert index.rejection == RejectRule(chosen["rule"], chosen["threshold"])
    assert index.generation == data["stored_generation"]

    info = json_of("info", "--index", index_dir)
    assert info["rejection"]["rule"] == chosen["rule"] and info["rejection"]["calibration"]["far"] == 0.1
    assert f"rejection:  {chosen['rule']} >= " in invoke("info", "--index", index_dir).output

    # query: the JSON answer is the API's; a rejected photo has "match": null and keeps its candidates
    photos = sorted(str(p) for p in (shop / "unknown").rglob("*.jpg")) + sorted(str(p) for p in (shop / "queries").rglob("*.jpg"))
    answers = json_of("query", *photos, "--index", index_dir, "--top-k", 1)
    expected = index.query(photos, top_k=1)
    assert answers == [r.to_dict() for r in expected]
    assert all(a["decision"]["rule"] == chosen["rule"] and len(a["matches"]) == 1 for a in answers)
    rejected = [a for a in answers if a["match"] is None]
    assert rejected and all(not a["decision"]["accepted"] and a["matches"] for a in rejected)
    text = invoke("query", *photos[:3], "--index", index_dir).output
    assert "-> " in text
    assert all(a["decision"] is None for a in json_of("query", *photos[:3], "--index", index_dir, "--no-reject"))
    low = json_of("query", photos[0], "--index", index_dir, "--threshold", -10)
    assert low[0]["match"] is not None and low[0]["decision"]["threshold"] == -10

    # eval: open-set metrics and the rates at the stored threshold, as the API computes them
    report = evaluate(shop / "queries", index, unknown=shop / "unknown")
    data = json_of("eval", shop / "queries", "--index", index_dir, "--unknown", shop / "unknown", "-q")
    assert data["open_set"] == json.loads(json.dumps(report.open_set.to_dict()))
    o = data["open_set"]
    assert o["rule"] == chosen["rule"] and o["known"] == 24 and o["unknown"] == 12
    assert set(o["dir_at_far"]) == {"0.01", "0.05"} and 0 <= o["auroc"] <= 1 and 0 <= o["open_auc"] <= 1
    assert set(o["by_rule"]) == {"score", "margin", "ratio"}
    assert o["at_threshold"]["false_accept_rate"] is not None
    text = invoke("eval", shop / "queries", "--index", index_dir, "--unknown", shop / "unknown", "-q").output
    assert "not in catalog:" in text and "AUROC" in text and "OpenAUC" in text


def test_uncalibrated_index_answers_as_before_and_says_so(shop, index_dir):
    answers = json_of("query", str(shop / "queries" / "sku-0" / "0.jpg"), "--index", index_dir)
    assert answers[0]["decision"] is None and answers[0]["match"]["sku"] == answers[0]["matches"][0]["sku"]
    assert json_of("info", "--index", index_dir)["rejection"] is None
    assert "rejection:  none" in invoke("info", "--index", index_dir).output
    data = json_of("eval", shop / "queries", "--index", index_dir, "-q")
    assert data["open_set"] is None
    data = json_of("eval", shop / "queries", "--index", index_dir, "--unknown", shop / "unknown", "-q")
    assert data["open_set"]["rule"] is None and data["open_set"]["at_threshold"] is None
    assert data["open_set"]["auroc"] == data["open_set"]["by_rule"]["score"]["auroc"]


def test_calibrate_errors(shop, index_dir, tmp_path):
    few = write_csv(tmp_path / "few.csv", [{"image": str(p), "sku": p.parent.name}
                                           for p in sorted((shop / "queries").glob("sku-[01]/*.jpg"))])
    result = invoke("calibrate", few, "--index", index_dir)
    assert result.exit_code == 1 and "Error: calibration needs labelled photos of at least 5 SKUs" in result.output
    result = invoke("calibrate", shop / "queries", "--index", index_dir, "--far", 1.5)
    assert result.exit_code == 2
    result = invoke("query", str(shop / "queries" / "sku-0" / "0.jpg"), "--index", index_dir, "--threshold", 0.5,
                    "--no-reject")
    assert result.exit_code == 2 and "contradict" in result.output
    dry = json_of("calibrate", shop / "queries", "--index", index_dir, "--folds", 4, "--dry-run", "-q")
    assert dry["stored"] is False and ProductIndex.open(index_dir).rejection is None
    assert dry["warning"] is None  # an ImageNet embedder was not trained on the SKUs left out


def test_calibrate_on_splits_made_of_symlinks(shop, index_dir, tmp_path):
    """A folder of links to the photos (a split cut without copying) calibrates as the photos do."""
    for photo in sorted((shop / "queries").glob("*/*.jpg")):
        (tmp_path / "split" / photo.parent.name).mkdir(parents=True, exist_ok=True)
        os.symlink(photo, tmp_path / "split" / photo.parent.name / photo.name)
    linked = json_of("calibrate", tmp_path / "split", "--index", index_dir, "--folds", 4, "--dry-run", "-q")
    plain = json_of("calibrate", shop / "queries", "--index", index_dir, "--folds", 4, "--dry-run", "-q")
    assert linked["skipped"] == [] and (linked["photos"], linked["skus"]) == (24, 8)
    assert linked["chosen"] == plain["chosen"]


def test_calibrate_with_photos_of_other_products(shop, index_dir):
    data = json_of("calibrate", shop / "queries", "--index", index_dir, "--unknown", shop / "unknown", "--folds", 4,
                   "-q")
    assert (data["left_out"], data["others"], data["unknown"], data["known"]) == (24, 12, 36, 24)
    assert ProductIndex.open(index_dir).rejection.calibration["others"] == 12


def test_a_rule_that_rejects_most_known_photos_is_not_stored_unless_forced(shop, index_dir, caplog):
    """The shop's own photos given as --unknown: the rule that holds them to 10% false accepts
    rejects about 90% of the known ones. Refused (one line, nothing stored), measured with
    --dry-run (both warnings), stored with --force, and removed with --clear."""
    args = ("calibrate", shop / "queries", "--index", index_dir, "--unknown", shop / "queries", "--far", 0.1,
            "--folds", 4, "-q")
    refused = invoke(*args)
    assert refused.exit_code == 1 and refused.stdout == ""
    [error] = refused.stderr.splitlines()[-1:]
    assert error.startswith("Error: the calibrated rule (") and "of the photos of the shop's own products" in error
    assert error.endswith(f"nothing was stored: see the rates with --dry-run, or store it anyway with --force "
                          f"(undo: prodsearch calibrate --clear --index {index_dir})")
    assert ProductIndex.open(index_dir).rejection is None

    dry = json_of(*args, "--dry-run")
    assert dry["stored"] is False and dry["chosen"]["known_rejected"] > 0.5
    assert dry["warning"].startswith("8 SKUs of the unknown photos are in the index (sku-0, sku-1, sku-2, sku-3, "
                                     "sku-4) and 24 unknown photos are also among the known ones (e.g. ")
    assert "train one" in dry["warning"]
    with caplog.at_level("WARNING"):  # eval says the same of the same mistake
        evaluate(shop / "queries", ProductIndex.open(index_dir), unknown=shop / "queries")
    assert "8 SKUs of the unknown photos are in the index" in caplog.text and "24 unknown photos are also" in caplog.text

    forced = invoke(*args, "--force")
    assert forced.exit_code == 0, forced.output
    assert f"warning: it rejects {dry['chosen']['known_rejected']:.0%} of the shop's own photos; undo: prodsearch " \
           f"calibrate --clear --index {index_dir}" in forced.stdout
    assert ProductIndex.open(index_dir).rejection is not None

    cleared = invoke("calibrate", "--clear", "--index", index_dir)
    assert cleared.exit_code == 0 and cleared.stdout.startswith(f'Removed the "not in catalog" rule from {index_dir}')
    assert ProductIndex.open(index_dir).rejection is None and "rejection:  none" in invoke("info", "--index", index_dir).output
    again = json_of("calibrate", "--clear", "--index", index_dir)
    assert again == {"index_dir": str(index_dir), "cleared": False, "stored_generation": None}
    assert invoke("calibrate", shop / "queries", "--clear", "--index", index_dir).exit_code == 2
    assert "give QUERIES" in invoke("calibrate", "--index", index_dir).output


def test_search_api_applies_the_rule(shop, index_dir):
    from fastapi.testclient import TestClient

    from prodsearch.serve.app import create_app
    from prodsearch.serve.server import open_service
    from prodsearch.serve.service import ServeSettings

    photo = (shop / "queries" / "sku-0" / "0.jpg").read_bytes()
    service = open_service(ServeSettings(index_dir))
    try:
        with TestClient(create_app(service)) as client:
            plain = client.post("/v1/search", files={"image": ("q.jpg", photo, "image/jpeg")}).json()
            assert plain["decision"] is None and plain["match"] == plain["matches"][0]["sku"]
            strict = client.post("/v1/search", files={"image": ("q.jpg", photo, "image/jpeg")},
                                 data={"threshold": "0.9999"}).json()
            assert strict["match"] is None and strict["matches"]
            assert strict["decision"] == {"accepted": False, "rule": "score", "threshold": 0.9999,
                                          "value": pytest.approx(strict["matches"][0]["score"])}
            invoke("calibrate", shop / "queries", "--index", index_dir, "--folds", 4, "-q")
            service.index.refresh()
            stored = client.post("/v1/search", files={"image": ("q.jpg", photo, "image/jpeg")}).json()
            assert stored["decision"]["rule"] == service.index.rejection.rule
            off = client.post("/v1/search?reject=false", files={"image": ("q.jpg", photo, "image/jpeg")}).json()
            assert off["decision"] is None
    finally:
        service.close()


def test_eval_report_is_written(shop, index_dir, tmp_path):
    data = json_of("eval", shop / "queries", "--index", index_dir, "--unknown", shop / "unknown", "--report",
                   tmp_path / "report", "-q")
    page = tmp_path / "report" / "index.html"
    assert data["report"] == str(page) and page.is_file()
    text = page.read_text()
    assert "Products not in the catalog" in text and "Worst queries" in text
    assert invoke("eval", shop / "queries", "--index", index_dir, "--report", tmp_path / "r2", "-q").output.endswith(
        f"report: {tmp_path / 'r2' / 'index.html'}\n")
