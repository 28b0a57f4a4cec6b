"""int8 only where it keeps the shop's answers: measured at index time on its own photos (issue 28, part 4).

This machine has no VNNI, so ``auto`` takes fp32 here; the builds below force the "int8 would be
picked" path. int8 itself runs (slower) on AVX2, so every measurement is a real one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from prodsearch.cli import cli
from prodsearch.errors import IndexDirError
from prodsearch.indexer.build import build_index
from prodsearch.indexer.catalog_db import CatalogDB
from prodsearch.indexer.info import index_info
from prodsearch.indexer.lifecycle import add_to_index
from prodsearch.indexer.manifest import MANIFEST, read_manifest, write_manifest
from prodsearch.indexer.precision_check import (MAX_INT8_CHANGED, Agreement, PrecisionCheck, answer_agreement, decide,
                                                measure_int8, reusing, sample_spread)
from prodsearch.indexer.product_index import ProductIndex
from prodsearch.indexer.store import CATALOG_DB
from prodsearch.retrieval import runtime
from prodsearch.retrieval.embedding import FileEmbeddings
from prodsearch.retrieval.onnx_files import MODEL_FILE, stored_models

from conftest import clustered_vectors, product_image, write_vectors_index


def noisy_catalog(root: Path, skus: int, per_sku: int, sku_noise: float, photo_noise: float,
                  same_product: bool) -> Path:
    """root/<sku>/<i>.png, 64 px: every photo of a SKU is its product with pixel noise of
    ``photo_noise`` (sd, 0-255). ``same_product``: every SKU is one product with a faint noise of its
    own (``sku_noise``), look-alikes that only small differences tell apart; else distinct products."""
    rng = np.random.default_rng(0)
    common = np.asarray(product_image(7, 64), np.float32)
    for s in range(skus):
        product = (common + rng.normal(0, sku_noise, common.shape) if same_product
                   else np.asarray(product_image(s, 64), np.float32))
        (root / f"sku-{s:02d}").mkdir(parents=True)
        for i in range(per_sku):
            photo = np.clip(product + rng.normal(0, photo_noise, common.shape), 0, 255).astype(np.uint8)
            Image.fromarray(photo).save(root / f"sku-{s:02d}" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def fast_int8():
    """A CPU where ``--precision auto`` takes int8 (VNNI or AMX), for the whole module."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runtime, "has_int8_dot_product", lambda: True)
        yield


@pytest.fixture(scope="module")
def lookalikes(tmp_path_factory) -> Path:
    """16 SKUs of one product, each with a faint noise of its own, 3 photos each: int8's errors move
    the nearest neighbours (fp32 itself gets about 1 in 5 right)."""
    return noisy_catalog(tmp_path_factory.mktemp("lookalikes") / "catalog", 16, 3, 3.0, 3.0, same_product=True)


@pytest.fixture(scope="module")
def distinct(tmp_path_factory) -> Path:
    """16 distinct products, 3 slightly noisy photos each: int8 keeps every answer."""
    return noisy_catalog(tmp_path_factory.mktemp("distinct") / "catalog", 16, 3, 0.0, 3.0, same_product=False)


@pytest.fixture(scope="module")
def refused(fast_int8, lookalikes, embedder, tmp_path_factory) -> Path:
    index_dir = tmp_path_factory.mktemp("refused") / "idx"
    build_index(lookalikes, index_dir, model=embedder, num_workers=0)
    return index_dir


@pytest.fixture(scope="module")
def kept(fast_int8, distinct, embedder, tmp_path_factory) -> Path:
    index_dir = tmp_path_factory.mktemp("kept") / "idx"
    build_index(distinct, index_dir, model=embedder, num_workers=0)
    return index_dir


def precisions(index_dir: Path) -> list[str]:
    return sorted(MODEL_FILE.match(name).group(1) for name in stored_models(index_dir, read_manifest(index_dir).model))


def stored_match(index_dir: Path, precision: str) -> float:
    """The lowest cosine between the index's stored vectors and its photos embedded again in ``precision``."""
    db = CatalogDB(index_dir / CATALOG_DB)
    with closing(db):
        rows = db.image_rows()
        stored = db.vectors([row["id"] for row in rows], read_manifest(index_dir).model.embed_dim)
    again = ProductIndex.open(index_dir, precision=precision).embed([row["path"] for row in rows]).vectors
    return float(np.sum(stored * again, axis=1).min())


# ------------------------------------------------------------------ the measurement


def plain_agreement(fp32, int8, skus, queries=None):
    """The definition, one photo at a time: a SKU scores its best photo, the query's own left out."""
    def answer(query, vectors, own):
        best = {}
        for j, (v, sku) in enumerate(zip(vectors, skus)):
            if j != own:
                best[sku] = max(best.get(sku, -2.0), float(v @ query))
        return max(best, key=best.get)

    pairs = ([(fp32[i], int8[i], i) for i in range(len(skus))] if queries is None
             else [(a, b, -1) for a, b in zip(*queries)])
    return sum(answer(a, fp32, own) != answer(b, int8, own) for a, b, own in pairs)


@pytest.mark.parametrize("noise", [0.05, 0.3])
def test_answer_agreement_is_the_plain_loop(noise):
    rng = np.random.default_rng(1)
    fp32 = clustered_vectors(120, 32, rng, clusters=12, noise=0.5)
    int8 = fp32 + noise * rng.normal(size=fp32.shape).astype(np.float32)
    int8 /= np.linalg.norm(int8, axis=1, keepdims=True)
    skus = np.array([f"s{i % 30}" for i in range(120)])
    result = answer_agreement(fp32, int8, skus)
    assert result.photos == 120 and result.changed == plain_agreement(fp32, int8, skus) > 0
    assert result.agreement == pytest.approx(1 - result.changed / 120)
    assert result.fp32_right == int(np.sum(skus[np.argmax(np.where(np.eye(120, dtype=bool), -9, fp32 @ fp32.T), 1)] == skus))

    queries = (fp32[:40] + 0.1 * rng.normal(size=(40, 32)).astype(np.float32),
               int8[:40] + 0.1 * rng.normal(size=(40, 32)).astype(np.float32))
    asked = answer_agreement(fp32, int8, skus, queries, skus[:40])
    assert asked.photos == 40 and asked.changed == plain_agreement(fp32, int8, skus, queries)
    assert 0 < asked.int8_right <= 40


def test_a_sample_of_one_photo_measures_nothing_and_auto_refuses():
    v = np.ones((1, 4), np.float32) / 2
    assert answer_agreement(v, v, ["a"]) == Agreement(0, 0)
    assert decide(Agreement(0, 0)).chosen == "fp32"


def test_the_limit_is_at_most_half_a_percent():
    assert MAX_INT8_CHANGED == 0.005
    assert decide(Agreement(400, 2)).chosen == "int8"  # 0.5%
    assert decide(Agreement(400, 3)).chosen == "fp32"
    assert decide(Agreement(400, 3), limit=1.0).chosen == "int8"
    asked = decide(Agreement(400, 40), asked="int8")  # asked for by name: obeyed, and said
    assert asked.chosen == "int8" and not asked.within_limit and asked.describe().startswith("asked for")


def test_the_sample_is_spread_over_the_catalog():
    assert sample_spread(7) == list(range(7))
    spread = sample_spread(10_000, 500)
    assert len(set(spread)) == 500 and spread[0] == 0 and spread[-1] == 9_999
    assert max(np.diff(spread)) - min(np.diff(spread)) <= 1


def test_the_build_reuses_what_the_check_embedded(tmp_path):
    """Photos the check embedded come from it; the rest are embedded, in input order either way."""
    from prodsearch.indexer.precision_check import Measured

    paths = [str(tmp_path / f"{i}.jpg") for i in range(6)]
    done = FileEmbeddings(np.eye(6, 4, dtype=np.float32)[[1, 3]], np.array([0, 1]), np.array([[10, 11], [30, 31]]),
                          seconds=2.0)
    asked = []

    def embed(encoder, files, progress=None, **options):
        asked.append(list(files))
        return FileEmbeddings(np.full((len(files) - 1, 4), 7, np.float32), np.arange(1, len(files)),
                              np.full((len(files) - 1, 2), 5), {0: "broken"}, 1.0)

    result = reusing(Measured(decide(Agreement(2, 0)), [paths[1], paths[3]], done), embed)(None, paths)
    assert asked == [[paths[0], paths[2], paths[4], paths[5]]]
    assert result.positions.tolist() == [1, 2, 3, 4, 5] and result.failures == {0: "broken"}
    assert result.vectors[[0, 2]].tolist() == done.vectors.tolist() and (result.vectors[[1, 3, 4]] == 7).all()
    assert result.sizes.tolist() == [[10, 11], [5, 5], [30, 31], [5, 5], [5, 5]] and result.seconds == 3.0


# ------------------------------------------------------------------ at index time


def test_lookalike_skus_make_auto_refuse_int8(refused, lookalikes):
    check = read_manifest(refused).precision_check
    assert (check.photos, check.chosen, check.asked, check.source) == (48, "fp32", "auto", "catalog photos")
    assert check.changed / check.photos > 4 * MAX_INT8_CHANGED  # far above the limit, not by a hair
    assert precisions(refused) == ["fp32"]  # no int8 model kept
    assert stored_match(refused, "fp32") > 0.999  # the catalog was embedded in fp32
    assert ProductIndex.open(refused).encoder.precision == "fp32"  # and auto queries it in fp32
    info = index_info(refused)
    assert info.runtime == "onnx fp32 on cpu" and info.precision_check == check.to_dict()


def test_distinct_products_keep_int8(kept):
    check = read_manifest(kept).precision_check
    assert (check.photos, check.changed, check.chosen) == (48, 0, "int8")
    assert precisions(kept) == ["fp32", "int8"]
    assert stored_match(kept, "int8") > 0.999
    assert ProductIndex.open(kept).encoder.precision == "int8"
    assert index_info(kept).runtime == "onnx int8 on cpu"


def test_add_keeps_the_choice_and_a_rebuild_measures_again(refused, kept, lookalikes, tmp_path, caplog):
    """``add`` embeds in what the index chose without measuring; a rebuild measures again: the kept
    index rebuilt from the look-alike catalog refuses int8 and drops its int8 model."""
    copy = tmp_path / "refused"
    shutil.copytree(refused, copy)
    photo = tmp_path / "new" / "sku-99" / "0.png"
    photo.parent.mkdir(parents=True)
    product_image(99, 64).save(photo)
    with caplog.at_level(logging.INFO, logger="prodsearch"):
        add_to_index(tmp_path / "new", copy, num_workers=0)
    assert "int8:" not in caplog.text and "int8 was refused when" in caplog.text
    assert read_manifest(copy).precision_check == read_manifest(refused).precision_check
    assert precisions(copy) == ["fp32"]

    rebuilt = tmp_path / "kept"
    shutil.copytree(kept, rebuilt)
    build_index(lookalikes, rebuilt, num_workers=0)
    check = read_manifest(rebuilt).precision_check
    assert check.chosen == "fp32" and check.changed > MAX_INT8_CHANGED * check.photos
    assert precisions(rebuilt) == ["fp32"] and stored_match(rebuilt, "fp32") > 0.999


def test_int8_asked_for_by_name_is_obeyed_and_warned(lookalikes, tmp_path, caplog):
    """``index --precision int8``: int8 as asked, the measurement in the report and the manifest."""
    with caplog.at_level(logging.WARNING, logger="prodsearch"):
        result = CliRunner().invoke(cli, ["index", str(lookalikes), "--index", str(tmp_path / "idx"), "--precision",
                                          "int8", "--workers", "0", "--json"])
    assert result.exit_code == 0, result.output
    check = read_manifest(tmp_path / "idx").precision_check
    assert (check.chosen, check.asked) == ("int8", "int8") and not check.within_limit
    assert json.loads(result.stdout)["precision_check"] == check.to_dict()
    assert "--precision auto would embed in fp32" in caplog.text
    assert precisions(tmp_path / "idx") == ["fp32", "int8"] and stored_match(tmp_path / "idx", "int8") > 0.999


def test_tune_measures_on_its_own_photos(kept, distinct, lookalikes):
    """The labelled photos of a later ``tune`` as the queries, against the catalog sample."""
    fp32 = ProductIndex.open(kept, precision="fp32").encoder
    int8 = ProductIndex.open(kept, precision="int8").encoder
    catalog = sorted(distinct.glob("*/*.png"))
    queries = sorted(distinct.glob("*/0.png"))
    measured = measure_int8(fp32, int8, catalog, [p.parent.name for p in catalog], queries=queries,
                            query_skus=[p.parent.name for p in queries], source="customer photos")
    check = measured.check
    assert (check.photos, check.source, check.chosen) == (16, "customer photos", "int8")
    assert check.fp32_right == check.int8_right == 16  # each query is a catalog photo: its SKU, found
    assert measured.paths == [str(p) for p in catalog] and len(measured.vectors.vectors) == len(catalog)


# ------------------------------------------------------------------ manifest and info


def test_the_manifest_keeps_the_check_and_an_old_one_still_reads(tmp_path):
    rng = np.random.default_rng(0)
    write_vectors_index(tmp_path / "idx", ["a", "b"], clustered_vectors(2, 8, rng))
    assert read_manifest(tmp_path / "idx").precision_check is None  # as every index before the check
    check = PrecisionCheck(500, 16, MAX_INT8_CHANGED, "fp32", "auto", "catalog photos", 400, 390)
    manifest = read_manifest(tmp_path / "idx")
    write_manifest(tmp_path / "idx", dataclasses.replace(manifest, precision_check=check))
    assert read_manifest(tmp_path / "idx").precision_check == check
    data = json.loads((tmp_path / "idx" / MANIFEST).read_text())
    assert data["precision_check"]["agreement"] == pytest.approx(0.968)
    data["precision_check"]["changed"] = 501
    (tmp_path / "idx" / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(IndexDirError, match=r"damaged \(precision_check: counts above the 500 photos measured"):
        read_manifest(tmp_path / "idx")


def test_the_index_report_says_what_was_measured(refused):
    from prodsearch.cli.commands import format_build_report
    from prodsearch.indexer.build import BuildReport

    check = read_manifest(refused).precision_check
    text = format_build_report(BuildReport(refused, 16, 48, precision_check=check))
    assert f"  int8: refused, it changed {check.changed / check.photos:.1%} of top-1 answers" in text


def test_info_shows_the_measurement(refused, kept, tmp_path):
    check = read_manifest(refused).precision_check
    text = CliRunner().invoke(cli, ["info", "--index", str(refused)])
    assert text.exit_code == 0, text.output
    share = f"{check.changed / check.photos:.1%}"
    assert (f"int8:       refused, it changed {share} of top-1 answers on 48 catalog photos (limit 0.5%): fp32"
            in text.output)
    as_json = json.loads(CliRunner().invoke(cli, ["info", "--index", str(refused), "--json"]).output)
    assert as_json["precision_check"] == {**check.to_dict(), "agreement": pytest.approx(1 - check.changed / 48, abs=1e-6)}
    text = CliRunner().invoke(cli, ["info", "--index", str(kept)]).output
    assert "int8:       kept, 0.0% of top-1 answers changed on 48 catalog photos (limit 0.5%)" in text
    write_vectors_index(tmp_path / "old", ["a"], clustered_vectors(1, 8, np.random.default_rng(0)))
    text = CliRunner().invoke(cli, ["info", "--index", str(tmp_path / "old")]).output
    assert "int8:       not measured" in text
    assert json.loads(CliRunner().invoke(cli, ["info", "--index", str(tmp_path / "old"), "--json"]).output)[
        "precision_check"] is None
