"""``prodsearch tune``: the one-standard-error chooser against a plain loop and hand-made cases, the
Wilson interval and the exact search by hand, and the command on a tiny synthetic shop: its table,
its JSON against a recomputation through the API, the manifest, info, the cache, bad input."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from prodsearch import choices
from prodsearch.catalog.listing import read_listing
from prodsearch.cli import cli
from prodsearch.eval import tune as tuning
from prodsearch.eval.tune import choose, photo_hits, wilson_interval
from prodsearch.indexer.manifest import Manifest, read_manifest
from prodsearch.indexer.manifest_schema import manifest_problem
from prodsearch.synthetic import write_synthetic_dataset


def loop_choice(hits: np.ndarray) -> int:
    """The rule written out: best = highest mean; the first candidate within one SE of the paired difference."""
    n = hits.shape[1]
    means = [sum(row) / n for row in hits.tolist()]
    best = max(range(len(means)), key=lambda i: (means[i], -i))
    for i, row in enumerate(hits.tolist()):
        d = [a - b for a, b in zip(row, hits[best].tolist())]
        mean_d = sum(d) / n
        se = math.sqrt(sum((x - mean_d) ** 2 for x in d) / (n - 1)) / math.sqrt(n)
        if means[i] >= means[best] - se - 1e-12:
            return i
    raise AssertionError("the best always qualifies")


def test_choice_matches_a_plain_loop():
    rng = np.random.default_rng(7)
    for _ in range(300):
        candidates, photos = int(rng.integers(1, 7)), int(rng.integers(2, 60))
        rates = rng.uniform(0.2, 0.9, candidates)
        hits = (rng.random((candidates, photos)) < rates[:, None]).astype(int)
        c = choose(hits)
        assert c.chosen == loop_choice(hits)
        assert c.best == int(np.argmax(hits.mean(axis=1)))
        assert c.se[c.best] == 0.0


def test_choice_by_hand():
    # equal scores: the simplest, whatever comes after it
    assert choose(np.array([[1, 0, 1, 0], [0, 1, 0, 1]])).chosen == 0
    # a later candidate right on every photo the first is, and on 3 more of 4: 0.75 over 1 SE away
    c = choose(np.array([[1, 0, 0, 0], [1, 1, 1, 1]]))
    assert (c.best, c.chosen) == (1, 1)
    # one photo apart in 10: SE of the difference is 0.1 = the gap, so the simpler one is chosen
    first, second = np.array([1] * 5 + [0] * 5), np.array([1] * 6 + [0] * 4)
    c = choose(np.stack([first, second]))
    assert c.best == 1 and c.se[0] == pytest.approx(0.1) and c.chosen == 0
    # two photos apart in 10 (SE sqrt(0.2*0.8*10/9)/sqrt(10) = 0.133 < 0.2): the better one
    c = choose(np.stack([first, np.array([1] * 7 + [0] * 3)]))
    assert c.chosen == 1
    # the middle one qualifies before the best, the first does not
    c = choose(np.array([[0] * 10, [1] * 6 + [0] * 4, [1] * 7 + [0] * 3]))
    assert (c.best, c.chosen) == (2, 1)
    with pytest.raises(ValueError):
        choose(np.zeros((2, 0)))


def test_wilson_interval_by_hand():
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson_interval(5, 10)
    assert (low, high) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    for k in range(11):
        low, high = wilson_interval(k, 10)
        assert low <= k / 10 <= high
        assert (low, high) == pytest.approx((1 - wilson_interval(10 - k, 10)[1], 1 - wilson_interval(10 - k, 10)[0]))
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_photo_hits_score_a_sku_by_its_best_photo():
    catalog = np.array([[1, 0, 0], [0, 1, 0], [0, 0.6, 0.8], [0, 0, 1]], np.float32)
    skus = ["a", "b", "b", "c"]
    photos = np.array([[0.9, 0.1, 0.4], [0, 0.6, 0.8], [0.6, 0.8, 0], [0.5, 0.5, 0.5]], np.float32)
    top1, top5 = photo_hits(catalog, skus, photos, ["a", "b", "a", "c"], k=2)
    assert top1.tolist() == [True, True, False, False]  # the last: c ties with a and b, so it is not first
    assert top5.tolist() == [True, True, True, False]  # photo 2: b (0.8) then a (0.6); photo 3: a, b, c all tie


def test_the_cli_lists_the_library_candidates():
    assert choices.TUNE_CANDIDATES == tuning.CANDIDATES
    assert tuning.FIXED[0].options() == "--model tf_efficientnet_lite0 --precision fp32"
    assert [c.name for c in tuning.FIXED][:2] == ["plain", "size160"]


def test_manifests_without_tuning_still_read():
    base = {"format": "prodsearch-index", "format_version": 2, "prodsearch_version": "x", "embed_dim": 4,
            "model": {"name": "m", "weights": "w", "embed_dim": 4, "data_config": {"input_size": [3, 8, 8]}},
            "vector_index": {"type": "IndexFlatIP"}, "catalog": {"source": "c"}}
    assert manifest_problem(json.dumps(base).encode()) is None
    assert Manifest.from_dict(base).tuning is None and "tuning" not in Manifest.from_dict(base).to_dict()
    bad = base | {"tuning": {"chosen": "plain", "photos": "many", "rule": "r", "candidates": []}}
    assert "tuning.photos" in manifest_problem(json.dumps(bad).encode())


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune-shop")
    return write_synthetic_dataset(root / "shop", n_skus=6, snapshots_per_sku=2, size=64)


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_tune_chooses_builds_and_records(shop, tmp_path, monkeypatch):
    from prodsearch.retrieval.encoders import create_encoder

    index_dir = tmp_path / "idx"
    args = ("tune", shop.catalog_dir, "--val", shop.queries_csv, "--index", index_dir, "--budget", 0,
            "--candidates", "plain,size160,int8", "--workers", 0)
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["photos"] == 12 and data["skus"] == 6 and data["cached"] == []
    assert [c["name"] for c in data["candidates"]] == ["plain", "size160", "int8"]
    # the numbers, recomputed through the API
    catalog, photos = read_listing(shop.catalog_dir), read_listing(shop.queries_csv)
    by_name = {c["name"]: c for c in data["candidates"]}
    hits = {}
    for candidate in tuning.FIXED[:2]:
        encoder = create_encoder(candidate.model, precision="fp32")
        top1, top5, _ = tuning.score_candidate(candidate, encoder, catalog.items, photos.items, num_workers=0)
        hits[candidate.name] = top1
        row = by_name[candidate.name]
        assert row["top1"] == pytest.approx(top1.mean()) and row["top5"] == pytest.approx(top5.mean())
        assert (row["low"], row["high"]) == pytest.approx(wilson_interval(int(top1.sum()), len(top1)))
        assert row["options"] == candidate.options()
    best_fp32 = max(tuning.FIXED[:2], key=lambda c: hits[c.name].mean())  # the first of equals
    assert by_name["int8"]["options"] == f"--model {best_fp32.model} --precision int8"
    assert by_name["int8"]["top1"] is not None
    expected = choose(np.stack([hits["plain"], hits["size160"],
                                np.asarray(json.loads(next((index_dir / "tune").glob("int8-*.json")).read_text())["top1"])]))
    assert data["chosen"] == ["plain", "size160", "int8"][expected.chosen]
    # the index: built with the chosen settings, its manifest recording the choice
    manifest = read_manifest(index_dir)
    assert manifest.tuning["chosen"] == data["chosen"] and manifest.tuning["candidates"] == data["candidates"]
    chosen = by_name[data["chosen"]]
    assert manifest.model.label == chosen["options"].split()[1]
    assert data["index"]["images"] == 6
    info = invoke("info", "--index", index_dir)
    assert info.exit_code == 0, info.output
    line = next(line for line in info.output.splitlines() if line.startswith("tuning:"))
    assert line.startswith(f"tuning:     {data['chosen']} ({chosen['options']}): top-1 {chosen['top1']:.3f} "
                           f"(95% {chosen['low']:.3f}-{chosen['high']:.3f}) on 12 photos")
    assert line.endswith("" if data["chosen"] == "plain" else f"; plain {by_name['plain']['top1']:.3f}")
    assert json.loads(invoke("info", "--index", index_dir, "--json").output)["tuning"] == manifest.tuning

    # the text table, from the cache: nothing is embedded again but the index's rebuild; at a
    # terminal, a line per candidate on stderr (none with --json or -q)
    monkeypatch.setattr("prodsearch.cli.app.stderr_is_terminal", lambda: True)
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    told = [line for line in again.stderr.splitlines() if line.startswith("tune: ")]
    assert told[:3] == [f"tune: {name}: measured by an earlier run, reused ({path.name})" for name, path in
                        zip(("plain", "size160", "int8"), [next((index_dir / "tune").glob(f"{n}-*.json"))
                                                          for n in ("plain", "size160", "int8")])]
    assert told[3] == f"tune: building the index with {data['chosen']}: {chosen['options']}"
    lines = again.stdout.splitlines()
    assert lines[0] == "Tuned on 12 photos of 6 SKUs (catalog: 6 photos)"
    marked = [line for line in lines if line.startswith("* ")]
    assert len(marked) == 1 and marked[0].split()[1] == data["chosen"]
    assert f"  {by_name['plain']['top1']:.3f}  " in next(line for line in lines if line[2:].startswith("plain "))
    assert lines[5].startswith(f"Chosen: {data['chosen']}: ")
    assert "Indexed 6 images of 6 SKUs" in again.output
    quiet = invoke(*args, "-q")
    assert quiet.exit_code == 0 and quiet.stderr == "" and quiet.stdout.splitlines()[:6] == lines[:6]
    rerun_result = invoke(*args, "--json")
    assert rerun_result.stderr == ""
    rerun = json.loads(rerun_result.stdout)
    assert rerun["cached"] == ["plain", "size160", "int8"] and rerun["candidates"] == data["candidates"]


def test_tune_refuses_photos_of_other_skus(shop, tmp_path):
    photos = tmp_path / "photos"
    shutil.copytree(shop.queries_dir, photos)
    (photos / next(p.name for p in photos.iterdir())).rename(photos / "not-sold-here")
    result = CliRunner().invoke(cli, ["tune", str(shop.catalog_dir), "--val", str(photos), "--index",
                                      str(tmp_path / "idx"), "--budget", "0"])
    assert result.exit_code == 1
    assert "Error: 1 SKUs of the --val photos are not in the catalog" in result.output and "not-sold-here" in result.output
    assert not (tmp_path / "idx").exists()
    result = CliRunner().invoke(cli, ["tune", str(shop.catalog_dir), "--val", str(shop.queries_dir), "--index",
                                      str(tmp_path / "idx"), "--candidates", "plain,lite9"])
    assert result.exit_code == 1 and "Error: unknown candidate lite9; choose from: plain, size160" in result.output


def test_tune_trains_within_the_budget_only(tmp_path):
    shop = write_synthetic_dataset(tmp_path / "shop", n_skus=4, snapshots_per_sku=1, size=64,
                                   train_snapshots_per_sku=5)
    tiny = {"epochs": 1, "lr_steps": (), "img_size": 64, "resize": 72, "batch_size": 8, "accumulate": 1,
            "m_per_class": 2, "embed_dim": 32, "workers": 0}
    common = {"candidates": ["plain", "whole-224"], "train_settings": tiny, "num_workers": 0}
    index_dir = tmp_path / "idx"
    # 24 photos in batches of 8: the budget is checked after the 3rd batch, the last one
    short = tuning.tune(shop.train_csv, shop.queries_dir, index_dir, budget_minutes=1e-6, **common)
    whole = {r.candidate.name: r for r in short.results}["whole-224"]
    assert whole.skipped.startswith("not trained: measured") and "--budget" in whole.skipped
    assert short.chosen.candidate.name == "plain"

    report = tuning.tune(shop.train_csv, shop.queries_dir, index_dir, budget_minutes=30, **common)
    whole = {r.candidate.name: r for r in report.results}["whole-224"]
    assert whole.skipped is None and whole.top1 is not None and not whole.cached
    model = index_dir / "tune" / "train-whole-224" / "model.pt"
    assert whole.candidate.model == str(model) and model.is_file()
    assert whole.candidate.options() == f"--model {model} --precision fp32"

    again = tuning.tune(shop.train_csv, shop.queries_dir, index_dir, budget_minutes=30, **common)
    assert [r.cached for r in again.results] == [True, True]
    assert np.array_equal({r.candidate.name: r for r in again.results}["whole-224"].top1, whole.top1)


def test_the_reason_names_the_rule_at_work():
    from pathlib import Path

    from prodsearch.catalog.listing import Item, Listing

    photos = Listing(Path("p"), "folder", [Item(Path(f"{i}.jpg"), f"s{i % 5}") for i in range(10)])
    catalog = Listing(Path("c"), "folder", [Item(Path(f"c{i}.jpg"), f"s{i}") for i in range(5)])

    def scored(name, top1):
        return tuning.Scored(tuning.Candidate(name, name), np.array(top1, bool), np.ones(10, bool))

    close = tuning.report_of([scored("plain", [1] * 5 + [0] * 5), scored("size160", [1] * 6 + [0] * 4)], photos,
                             catalog, {})
    assert close.chosen.candidate.name == "plain"
    assert close.reason == "within one standard error (0.100) of size160 (0.600) and simpler"
    clear = tuning.report_of([scored("plain", [1] * 2 + [0] * 8), scored("views6", [1] * 8 + [0] * 2),
                              scored("int8", [1] * 8 + [0] * 2)], photos, catalog, {})
    assert clear.chosen.candidate.name == "views6"
    assert clear.reason == ("best top-1 (0.800); the simpler plain (0.200) is more than one standard error (0.163) "
                            "below; tied with int8, which is less simple")
    assert clear.warnings == []
    few = Listing(Path("p"), "folder", photos.items[:4])
    alone = tuning.report_of([tuning.Scored(tuning.Candidate("plain", "plain"), np.array([1, 1, 0, 1], bool),
                                            np.ones(4, bool)), tuning.Scored(tuning.Candidate("int8", "x"),
                                                                             skipped="int8 cannot run here")],
                             few, catalog, {})
    assert alone.reason == "best top-1 (0.750) and the simplest candidate"
    assert alone.warnings[0].startswith("only 4 photos: too few to tell")
    assert alone.tuning()["candidates"][1] == {"name": "int8", "options": "--model x --precision fp32", "top1": None,
                                                "low": None, "high": None, "top5": None, "minutes": 0.0,
                                                "skipped": "int8 cannot run here"}


def test_index_builds_into_a_folder_tune_measured_in_and_keeps_that(tmp_path, embedder, folder_catalog):
    from prodsearch.errors import IndexDirError
    from prodsearch.indexer import build_index

    index_dir = tmp_path / "idx"
    (index_dir / "tune").mkdir(parents=True)
    (index_dir / "tune" / "plain-x.json").write_text("{}")
    build_index(folder_catalog, index_dir, model=embedder, num_workers=0)
    assert (index_dir / "tune" / "plain-x.json").read_text() == "{}" and read_manifest(index_dir).tuning is None
    (index_dir / "manifest.json").write_text("{damaged")  # replaced whole by the next build: tune/ moves with it
    build_index(folder_catalog, index_dir, model=embedder, num_workers=0)
    assert (index_dir / "tune" / "plain-x.json").is_file()
    other = tmp_path / "other"
    (other / "tune").mkdir(parents=True)
    (other / "notes.txt").write_text("mine")
    with pytest.raises(IndexDirError, match="is not a prodsearch index"):
        build_index(folder_catalog, other, model=embedder, num_workers=0)
