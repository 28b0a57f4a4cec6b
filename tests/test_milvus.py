"""The Milvus vector store (issue 17): the same index, query, lifecycle and crash checks as FAISS,
run on both stores, answers equal to FAISS exact search. Milvus Lite runs embedded (a folder in the
index), and as a gRPC server (``python -m milvus_lite server``) for the ``http://`` URI path, where
several processes use one collection at once. A real Milvus standalone or cluster is not tested here."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from prodsearch.cli import cli
from prodsearch.errors import IndexDirError, IndexTypeError, VectorStoreError
from prodsearch.indexer import ProductIndex, build_index
from prodsearch.failpoints import CRASH_ENV
from prodsearch.indexer.info import index_info, repair_index
from prodsearch.indexer.lifecycle import add_to_index, remove_from_index, update_index
from prodsearch.indexer.milvus import MilvusStore, filter_expression
from prodsearch.indexer.milvus_types import milvus_index_spec
from prodsearch.indexer.search_backend import Where
from prodsearch.choices import MILVUS_TOKEN_ENV as TOKEN_ENV
from prodsearch.indexer.vector_store import MilvusTarget
from prodsearch.retrieval import create_embedder

from conftest import product_image, write_csv, write_folder_catalog

STORES = ("faiss", "milvus")
CATEGORIES = ["Dairy/Milk", "Dairy/Milk", "Dairy/Yoghurt", "Fruit", "Fruit/Apple", "Fruit_x/Pear%", "Fruitcake", None]


@pytest.fixture(scope="module")
def small_embedder():
    return create_embedder(img_size=64)


def write_shop(root, skus=8, per_sku=2, seed0=0):
    """A CSV catalog with a category tree (and a category holding LIKE's wildcards)."""
    rows = []
    for s in range(skus):
        for i in range(per_sku):
            path = root / f"p{s}_{i}.jpg"
            product_image(seed0 + 1000 * s + i).save(path, quality=92)
            rows.append({"image": path.name, "sku": f"sku{s}", "name": f"product {s}",
                         "category": CATEGORIES[s % len(CATEGORIES)] or ""})
    return write_csv(root / "catalog.csv", rows)


@pytest.fixture
def shops(tmp_path, small_embedder):
    """The same catalog indexed into FAISS (exact) and into Milvus Lite."""
    (tmp_path / "photos").mkdir()
    catalog = write_shop(tmp_path / "photos")
    for store in STORES:
        build_index(catalog, tmp_path / store, model=small_embedder, num_workers=0, vector_store=store,
                    index_type="Flat")
    return catalog, {store: tmp_path / store for store in STORES}


def answers(index_dir, queries, **kwargs):
    """(sku, image id) of each query's matches, and their scores."""
    index = ProductIndex.open(index_dir)
    try:
        rows = index.search(queries, **kwargs)
    finally:
        index.close()
    return [[(m.sku, m.image_id) for m in row] for row in rows], [[m.score for m in row] for row in rows]


def assert_same_answers(got, expected):
    assert got[0] == expected[0]
    for a, b in zip(got[1], expected[1]):
        np.testing.assert_allclose(a, b, atol=2e-4)  # float32 sums in another order


def query_vectors(n=12, dim=1280, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def catalog_vectors(index_dir):
    index = ProductIndex.open(index_dir)
    try:
        return index.catalog.vectors(index.image_ids.tolist(), index.manifest.model.embed_dim)
    finally:
        index.close()


def test_milvus_answers_equal_faiss_exact_search(shops):
    _, dirs = shops
    queries = np.concatenate([catalog_vectors(dirs["faiss"]), query_vectors()])
    for kwargs in ({"top_k": 5}, {"top_k": 3, "category": "Dairy"}, {"top_k": 3, "category": "Fruit"},
                   {"top_k": 2, "category": "Fruit_x"}, {"top_k": 4, "without_skus": {"sku1", "sku3"}},
                   {"top_k": 3, "category": "Dairy", "without_skus": {"sku0"}}):
        assert_same_answers(answers(dirs["milvus"], queries, **kwargs), answers(dirs["faiss"], queries, **kwargs))


def test_fused_and_photo_queries_agree(shops):
    catalog, dirs = shops
    photos = [catalog.parent / "p2_0.jpg", catalog.parent / "p5_1.jpg"]
    results = {}
    for store, index_dir in dirs.items():
        index = ProductIndex.open(index_dir)
        single = [[(m.sku, m.image_id) for m in r.matches] for r in index.query(photos, num_workers=0)]
        fused = index.query_as_one(photos, num_workers=0).matches
        results[store] = single, [m.sku for m in fused], [m.score for m in fused]
        index.close()
    assert results["milvus"][:2] == results["faiss"][:2]
    np.testing.assert_allclose(results["milvus"][2], results["faiss"][2], atol=2e-4)
    assert results["milvus"][0][0][0][0] == "sku2"


def test_category_filter_is_an_expression_inside_the_search():
    assert filter_expression(Where("Fruit", ("Fruit", "Fruit/Apple"))) == \
        '(category == "Fruit" or category like "Fruit/%")'
    assert filter_expression(Where("Fruit_x", ("Fruit_x/Pear%",))) == 'category in ["Fruit_x/Pear%"]'
    assert filter_expression(Where(None, (), frozenset({"b", 'a"q'}))) == 'sku not in ["a\\"q","b"]'


@pytest.mark.parametrize("store", STORES)
def test_lifecycle_add_update_remove(tmp_path, small_embedder, store):
    (tmp_path / "photos").mkdir()
    catalog = write_shop(tmp_path / "photos", skus=4)
    index_dir = tmp_path / "idx"
    build_index(catalog, index_dir, model=small_embedder, num_workers=0, vector_store=store)
    (tmp_path / "more").mkdir()
    more = write_shop(tmp_path / "more", skus=6, seed0=90)  # sku0..5: other photos, so 12 new images
    assert add_to_index(more, index_dir, num_workers=0).added == 12
    assert add_to_index(more, index_dir, num_workers=0).generation is None  # again: nothing to do
    assert index_info(index_dir).consistent and index_info(index_dir).vectors == 20
    remove_from_index(index_dir, skus=["sku1"])
    info = index_info(index_dir)
    assert info.consistent and info.vectors == info.images == 16
    # update: the catalog is the truth; sku0 moves to another category, which the filter must follow
    rows = [r for r in csv_rows(more) if r["sku"] != "sku5"]
    for r in rows:
        r["category"] = "Frozen" if r["sku"] == "sku0" else r["category"]
        r["image"] = str(tmp_path / "more" / r["image"])
    update_index(write_csv(tmp_path / "updated.csv", rows), index_dir, num_workers=0, allow_mass_removal=True)
    info = index_info(index_dir)
    assert info.consistent and info.vectors == info.images == 10
    hit, _ = answers(index_dir, catalog_vectors(index_dir)[:1], top_k=1, category="Frozen")
    assert hit[0][0][0] == "sku0"


def csv_rows(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_manifest_records_the_store_and_never_the_token(tmp_path, small_embedder, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "root:secret-token")
    catalog = write_folder_catalog(tmp_path / "catalog", ["a", "b"])
    build_index(catalog, tmp_path / "idx", model=small_embedder, num_workers=0, vector_store="milvus",
                milvus_collection="shop_one")
    text = (tmp_path / "idx" / "manifest.json").read_text()
    manifest = json.loads(text)
    assert manifest["vector_store"] == {"kind": "milvus", "uri": "milvus.db", "collection": "shop_one"}
    assert manifest["format_version"] == 3 and "secret" not in text
    moved = shutil.move(tmp_path / "idx", tmp_path / "elsewhere")  # the Lite folder moves with the index
    assert index_info(moved).consistent


def test_rebuild_in_place_keeps_the_store(tmp_path, small_embedder):
    catalog = write_folder_catalog(tmp_path / "catalog", ["a", "b", "c"])
    build_index(catalog, tmp_path / "idx", model=small_embedder, num_workers=0, vector_store="milvus")
    write_folder_catalog(catalog, ["d"], seed0=40)
    report = build_index(catalog, tmp_path / "idx", num_workers=0)
    assert report.images == 4 and index_info(tmp_path / "idx").vectors == 4
    with pytest.raises(IndexDirError, match="keeps its vectors in Milvus Lite"):
        build_index(catalog, tmp_path / "idx", num_workers=0, vector_store="faiss")


def test_index_types_map_onto_milvus_names():
    assert milvus_index_spec("auto", 5_000, 1280, lite=True) == "FLAT"
    assert milvus_index_spec("auto", 1_000_000, 1280, lite=True) == "IVF_SQ8:nlist=4096"
    assert milvus_index_spec("auto", 5_000_000, 1280, lite=False) == "IVF_PQ:nlist=8192,m=64"
    assert milvus_index_spec("auto", 5_000_000, 1280, lite=True) == "IVF_SQ8:nlist=8192"  # Lite has no PQ
    assert milvus_index_spec("IVF1024,Flat", 0, 1280, lite=True) == "IVF_FLAT:nlist=1024"
    assert milvus_index_spec("HNSW32,Flat", 0, 1280, lite=True) == "HNSW:M=32,efConstruction=200"
    assert milvus_index_spec("HNSW:M=16", 0, 1280, lite=True) == "HNSW:M=16,efConstruction=200"
    assert milvus_index_spec("GPU_CAGRA", 0, 1280, lite=False) == "GPU_CAGRA"
    with pytest.raises(IndexTypeError, match="Milvus Lite builds FLAT, IVF_FLAT, IVF_SQ8, HNSW indexes, not IVF_PQ"):
        milvus_index_spec("IVF_PQ", 10_000, 1280, lite=True)
    with pytest.raises(IndexTypeError, match="not an index type for Milvus"):
        milvus_index_spec("LSH", 10_000, 1280, lite=False)


def test_ivf_on_milvus_lite_finds_what_exact_search_finds(tmp_path, small_embedder, shops):
    catalog, dirs = shops
    build_index(catalog, tmp_path / "ivf", model=small_embedder, num_workers=0, vector_store="milvus",
                index_type="IVF_FLAT:nlist=4")  # nprobe 16 >= 4 lists: every list searched
    queries = catalog_vectors(dirs["faiss"])
    assert_same_answers(answers(tmp_path / "ivf", queries, top_k=3), answers(dirs["faiss"], queries, top_k=3))
    assert json.loads((tmp_path / "ivf" / "manifest.json").read_text())["vector_index"]["factory"] == "IVF_FLAT:nlist=4"


def test_a_lite_index_type_lite_lacks_is_refused_before_embedding(tmp_path):
    catalog = write_folder_catalog(tmp_path / "catalog", ["a", "b"])
    result = CliRunner().invoke(cli, ["index", str(catalog), "--index", str(tmp_path / "idx"), "--vector-store",
                                      "milvus", "--index-type", "IVF_PQ", "--silent"])
    assert result.exit_code == 1 and "needs a Milvus server" in result.output
    assert not (tmp_path / "idx").exists()


def test_cli_index_info_and_repair(tmp_path):
    catalog = write_folder_catalog(tmp_path / "catalog", ["a", "b", "c"])
    idx = tmp_path / "idx"
    runner = CliRunner()
    result = runner.invoke(cli, ["index", str(catalog), "--index", str(idx), "--vector-store", "milvus", "--silent",
                                 "--workers", "0", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(runner.invoke(cli, ["info", "--index", str(idx), "--json"]).output)
    assert info["vector_store"] == "Milvus Lite milvus.db, collection prodsearch_images"
    assert info == {**index_info(idx).to_dict(), "files": info["files"]} and info["vectors"] == 3
    # a row deleted behind prodsearch's back: info says so (exit 1), --repair brings Milvus level
    manifest_target = MilvusTarget()
    with MilvusStore.open(manifest_target, idx, 1280) as store:
        store.delete([0])
        store.flush()
    result = runner.invoke(cli, ["info", "--index", str(idx)])
    assert result.exit_code == 1 and "1 images without a vector" in result.output and "--repair" in result.output
    result = runner.invoke(cli, ["info", "--index", str(idx), "--repair"])
    assert result.exit_code == 0, result.output
    assert "repaired:   Milvus Lite milvus.db, collection prodsearch_images: 3 rows written, 0 deleted" in result.output


def test_an_unreachable_server_is_said_before_any_embedding(tmp_path):
    catalog = write_folder_catalog(tmp_path / "catalog", ["a"])
    result = CliRunner().invoke(cli, ["index", str(catalog), "--index", str(tmp_path / "idx"), "--milvus-uri",
                                      "http://127.0.0.1:9", "--silent"])
    assert result.exit_code == 1
    assert "cannot connect to Milvus at http://127.0.0.1:9" in result.output and TOKEN_ENV in result.output


# ---------------------------------------------------------------------- crashes between SQLite and Milvus

def run_add(index_dir, catalog, **env):
    return subprocess.run(
        [sys.executable, "-m", "prodsearch", "add", str(catalog), "--index", str(index_dir), "--silent", "--workers", "0"],
        env={**os.environ, **env}, capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def milvus_pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("milvus-crash")
    catalog = write_folder_catalog(root / "catalog", [f"s{i}" for i in range(5)], per_sku=2)
    build_index(catalog, root / "idx", model=create_embedder(img_size=64), num_workers=0, vector_store="milvus")
    new = write_folder_catalog(root / "new", [f"n{i}" for i in range(6)], per_sku=2, seed0=500)
    return root / "idx", new


@pytest.mark.parametrize("point,mends", [("before-commit", "writer"), ("inside-commit", "writer"),
                                         ("after-commit", "writer"), ("after-commit", "repair"),
                                         ("store-written", "writer")])
def test_killed_between_sqlite_and_milvus_loses_nothing(milvus_pristine, tmp_path, point, mends):
    pristine, catalog = milvus_pristine
    idx = shutil.copytree(pristine, tmp_path / "idx")
    proc = run_add(idx, catalog, **{CRASH_ENV: point})
    assert proc.returncode == -signal.SIGKILL
    info = index_info(idx)
    committed = point not in ("before-commit", "inside-commit")
    assert info.images == info.vectors == (22 if committed else 10)
    # Milvus behind catalog.db: readers apply the log, as FAISS readers do, and info says what is pending
    assert info.consistent and info.pending_changes == (12 if point in ("after-commit", "store-written") else 0)
    if committed:  # searchable at once, before any writer or repair
        assert answers(idx, catalog_vectors(idx)[-1:], top_k=1)[0][0][0][0] == "n5"
    if mends == "repair":
        repair_index(idx)
    else:  # the next writer replays the log first (upserts: what was written already is not doubled)
        proc = run_add(idx, catalog)
        assert proc.returncode == 0, proc.stderr.decode()
    info = index_info(idx)
    assert info.consistent and info.vectors == info.images == 22
    assert answers(idx, catalog_vectors(idx)[-1:], top_k=1)[0][0][0][0] == "n5"


def query_cli(index_dir, photo):
    """``prodsearch query --json`` in a fresh process: its first answer."""
    proc = subprocess.run([sys.executable, "-m", "prodsearch", "query", str(photo), "--index", str(index_dir),
                           "--json", "--top-k", "2"], check=False, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)[0]["match"]


def test_photos_a_killed_writer_committed_are_searched_at_once(milvus_pristine, tmp_path):
    """Killed between the SQLite commit and Milvus (issue 27, 3): a fresh ``query``, and a server opened on
    the index, answer the new photos right, before any writer or repair, and count what they search."""
    from fastapi.testclient import TestClient

    from prodsearch.serve.app import create_app
    from prodsearch.serve.server import open_service
    from prodsearch.serve.service import ServeSettings

    pristine, catalog = milvus_pristine
    idx = shutil.copytree(pristine, tmp_path / "idx")
    assert run_add(idx, catalog, **{CRASH_ENV: "after-commit"}).returncode == -signal.SIGKILL
    with MilvusStore.open(MilvusTarget(), idx, 1280) as store:
        assert store.count() == 10  # Milvus never heard of the 12 new photos
    photo = catalog / "n5" / "n5_1.jpg"
    match = query_cli(idx, photo)
    assert match["sku"] == "n5" and match["score"] == pytest.approx(1.0, abs=2e-3)
    service = open_service(ServeSettings(idx, refresh_seconds=0.1))
    with TestClient(create_app(service), raise_server_exceptions=False) as client:
        body = client.post("/v1/search", files=[("image", ("n5.jpg", photo.read_bytes(), "image/jpeg"))]).json()
        assert body["match"] == "n5" and body["matches"][0]["score"] == pytest.approx(1.0, abs=2e-3)
        assert client.get("/v1/index").json()["images"] == 22
        assert "prodsearch_index_images 22.0" in client.get("/metrics").text  # what it searches: all 22
        assert len(service.index) == 22
    # a reader of that generation, while the next writer brings Milvus level behind it (no new generation)
    from prodsearch.indexer.writer import IndexWriter

    reader = ProductIndex.open(idx)
    try:
        with IndexWriter(idx, "add"):
            pass
        assert index_info(idx).pending_changes == 0 and not reader.refresh()
        vectors = reader.catalog.vectors(reader.image_ids.tolist(), 1280)
        scores, ids = reader.vectors.search(vectors, 10)
        exact = -np.sort(-(vectors @ vectors.T), axis=1)[:, :10]
        np.testing.assert_allclose(scores, exact, atol=2e-4)
        assert (ids >= 0).all() and all(len(set(row)) == 10 for row in ids.tolist())
    finally:
        reader.close()


def test_readers_apply_the_log_with_categories_and_left_out_skus(shops, tmp_path, monkeypatch):
    """A writer whose changes never reached Milvus (new photos, a removed SKU, a product moved to another
    category): a Milvus reader answers exactly as FAISS, which has them all, with every filter."""
    from prodsearch.indexer.writer import IndexWriter

    catalog, dirs = shops
    rows = [r for r in csv_rows(catalog) if r["sku"] != "sku5"]
    for r in rows:
        r["category"] = "Fruit/Apple" if r["sku"] == "sku0" else r["category"]
    for i in range(2):
        product_image(9000 + i).save(catalog.parent / f"p9_{i}.jpg", quality=92)
        rows.append({"image": f"p9_{i}.jpg", "sku": "sku9", "name": "product 9", "category": "Dairy/Milk"})
    updated = write_csv(catalog.parent / "updated.csv", rows)
    before = catalog_vectors(dirs["milvus"])  # sku5's photos too, whose rows Milvus keeps
    update_index(updated, dirs["faiss"], num_workers=0, allow_mass_removal=True)
    monkeypatch.setattr(IndexWriter, "_write_milvus", lambda self, rebuild_as: None)  # dies before Milvus
    update_index(updated, dirs["milvus"], num_workers=0, allow_mass_removal=True)
    monkeypatch.undo()
    info = index_info(dirs["milvus"])
    assert info.consistent and info.pending_changes > 0 and info.vectors == info.images == 16
    queries = np.concatenate([catalog_vectors(dirs["faiss"]), query_vectors()])
    for kwargs in ({"top_k": 5}, {"top_k": 3, "category": "Dairy"}, {"top_k": 3, "category": "Fruit"},
                   {"top_k": 2, "category": "Fruit/Apple"}, {"top_k": 4, "without_skus": {"sku1", "sku9"}},
                   {"top_k": 3, "category": "Dairy", "without_skus": {"sku0"}}):
        assert_same_answers(answers(dirs["milvus"], queries, **kwargs), answers(dirs["faiss"], queries, **kwargs))
    found = {}
    for store, index_dir in dirs.items():  # the nearest 3 images, where rows Milvus still holds are nearest
        index = ProductIndex.open(index_dir)
        found[store] = *index.vectors.search(before, 3), index.image_ids
        index.close()
    np.testing.assert_allclose(found["milvus"][0], found["faiss"][0], atol=2e-4)
    assert np.isin(found["milvus"][1], found["milvus"][2]).all()  # none of the removed


# ---------------------------------------------------------------------- one process at a time: Milvus Lite

@pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="who holds a lock is told by Linux's /proc/locks")
def test_an_index_a_server_holds_is_refused_in_one_line(milvus_pristine, tmp_path):
    """Milvus Lite opens its folder in one process (issue 27, 13): while ``serve`` holds it, every other
    command says so in one line, exit 1, without Milvus Lite's traceback; ``info`` reports the catalog,
    says the vectors are in use, and advises no repair or rebuild."""
    from serving import server

    pristine, new = milvus_pristine
    idx = shutil.copytree(pristine, tmp_path / "idx")
    catalog = pristine.parent / "catalog"
    commands = {"query": ["query", str(catalog / "s1" / "s1_0.jpg")], "eval": ["eval", str(catalog)],
                "add": ["add", str(new)], "update": ["update", str(catalog)], "remove": ["remove", "--sku", "s1"],
                "repair": ["info", "--repair"], "info": ["info"], "info-json": ["info", "--json"]}
    with server(idx, tmp_path / "serve.log") as (serving, _):
        held = f"held by a running server (pid {serving.pid}: prodsearch serve --index {idx} --port "
        for name, args in commands.items():
            proc = subprocess.run([sys.executable, "-m", "prodsearch", *args, "--index", str(idx)], check=False,
                                  capture_output=True, timeout=300)
            out = proc.stdout.decode() + proc.stderr.decode()
            assert "Traceback" not in out and "DataDirLocked" not in out, (name, out)
            if name == "info":
                assert proc.returncode == 0, out
                assert f"vectors:    not read: Milvus Lite is {held}" in out and "consistent: yes" in out
                assert "rebuild" not in out and "--repair" not in out and "NO" not in out
            elif name == "info-json":
                info = json.loads(proc.stdout)
                assert proc.returncode == 0 and info["vectors"] is None and info["problems"] == []
                assert info["held_by"].startswith(held.removeprefix("held by "))
            else:
                assert proc.returncode == 1 and len(out.splitlines()) == 1, (name, out)
                assert out.startswith(f"Error: the index {idx} is {held}") and "stop that server" in out, (name, out)
    assert index_info(idx).images == 10  # nothing was written


# ---------------------------------------------------------------------- a server: several processes at once

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory):
    """Milvus Lite's gRPC server in its own process: what an ``http://`` URI reaches."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "milvus_lite", "server", "--data-dir",
                             str(tmp_path_factory.mktemp("milvus-server")), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=30)


def test_a_server_serves_a_reader_while_another_process_writes(tmp_path, small_embedder, milvus_server):
    catalog = write_folder_catalog(tmp_path / "catalog", ["a", "b"], per_sku=2)
    idx = tmp_path / "idx"
    build_index(catalog, idx, model=small_embedder, num_workers=0, milvus_uri=milvus_server,
                milvus_collection="shop_a")
    reader = ProductIndex.open(idx)  # held open, as a running server would
    try:
        new = write_folder_catalog(tmp_path / "new", ["c"], per_sku=2, seed0=70)
        proc = run_add(idx, new)
        assert proc.returncode == 0, proc.stderr.decode()
        assert reader.refresh() and len(reader) == 6
        assert reader.query([new / "c" / "c_1.jpg"], num_workers=0)[0].matches[0].sku == "c"
    finally:
        reader.close()
    reader = ProductIndex.open(idx)  # a running server; another process's add dies before writing Milvus
    try:
        new = write_folder_catalog(tmp_path / "more", ["d"], per_sku=2, seed0=80)
        assert run_add(idx, new, **{CRASH_ENV: "after-commit"}).returncode == -signal.SIGKILL
        assert reader.refresh() and len(reader) == 8
        match = reader.query([new / "d" / "d_1.jpg"], num_workers=0)[0].matches[0]
        assert match.sku == "d" and match.score == pytest.approx(1.0, abs=2e-3)
    finally:
        reader.close()
    with pytest.raises(IndexDirError, match="collection shop_a already exists"):
        build_index(catalog, tmp_path / "other", model=small_embedder, num_workers=0, milvus_uri=milvus_server,
                    milvus_collection="shop_a")


def test_milvus_lite_is_one_process_at_a_time(tmp_path, small_embedder):
    catalog = write_folder_catalog(tmp_path / "catalog", ["a", "b"])
    idx = tmp_path / "idx"
    build_index(catalog, idx, model=small_embedder, num_workers=0, vector_store="milvus")
    reader = ProductIndex.open(idx)
    try:
        proc = run_add(idx, write_folder_catalog(tmp_path / "new", ["c"], seed0=70))
        assert proc.returncode == 1
        out = proc.stderr.decode() + proc.stdout.decode()
        assert len(out.splitlines()) == 1 and "wait for it to finish or stop it" in out
        assert out.startswith(f"Error: the index {idx} is held by another process (")
        if os.path.exists("/proc/locks"):  # Linux names it
            assert out.startswith(f"Error: the index {idx} is held by another process (pid {os.getpid()}: ")
    finally:
        reader.close()
    with pytest.raises(VectorStoreError, match="refused"):
        with MilvusStore.open(MilvusTarget(collection="nope"), idx, 1280) as store:
            store.count()
