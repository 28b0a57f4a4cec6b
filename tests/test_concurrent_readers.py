"""One ProductIndex shared by threads while another process writes: every answer is that of one
generation, refresh() moves readers on, readers never hold the WAL back, and a thread pool gets the
answers sequential calls get."""

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from prodsearch.indexer import ProductIndex, build_index
from prodsearch.indexer.build import create_index_dir
from prodsearch.indexer.catalog_db import CatalogDB, Product
from prodsearch.indexer.manifest import Manifest, read_manifest
from prodsearch.indexer.writer import IndexWriter
from prodsearch.retrieval import create_embedder
from prodsearch.retrieval.embedder import EmbedderConfig

from conftest import product_image, write_csv

DIM = 32
START_SKUS = 30  # s00..s29, two images each
WINDOW = 3  # the writer keeps its last 3 SKUs: each commit adds one and removes the oldest
STEPS = 40
THREADS, MIN_QUERIES, TOP_K = 4, 50, 5

WRITER = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    from prodsearch.indexer.writer import IndexWriter

    index_dir, log_path, steps, window, dim = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
    moved_id = 2  # s01's first image: its file moves at every step

    def unit(seed, n):
        v = np.random.default_rng(seed).normal(size=(n, dim))
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

    with open(log_path, "w") as log:
        for n in range(steps):
            sku = f"w{n:03d}"
            images = [{"sku": sku, "path": f"/w/{sku}/{i}.jpg", "md5": f"{sku}-{i}", "width": 1, "height": 1,
                       "size": 1, "mtime": 0.0} for i in range(2)]
            products = [{"sku": sku, "name": f"W{n}", "category": "W"},
                        {"sku": "s00", "name": f"S0 at step {n}", "category": "S"}]
            moved = {moved_id: f"/s/s01/moved-{n}.jpg"}
            with IndexWriter(index_dir, "test writer", wait=30) as writer:
                gone = [r["id"] for r in writer.db.image_rows() if r["sku"] == f"w{n - window:03d}"]
                commit = writer.commit(products=products, images=images, vectors=unit(1000 + n, 2), remove=gone,
                                       moved=moved)
            log.write(json.dumps({"generation": commit.generation, "removed": gone, "moved": moved,
                                  "added": [[i, sku, img["path"]] for i, img in zip(commit.added_ids, images)],
                                  "names": {p["sku"]: p["name"] for p in products}}) + "\\n")
            log.flush()
            time.sleep(0.03)
""")


def unit(seed: int, n: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def start_skus() -> list[str]:
    return [f"s{i:02d}" for i in range(START_SKUS)]


def build_vector_index(index_dir: Path) -> Path:
    """Image 2i and 2i+1 belong to s<i>; their vectors are unit(i, 2)."""
    skus = start_skus()
    images = [{"sku": s, "path": f"/s/{s}/{k}.jpg", "md5": f"{s}-{k}", "width": 1, "height": 1, "size": 1,
               "mtime": 0.0} for s in skus for k in range(2)]
    products = [{"sku": s, "name": f"S{i}", "category": "S"} for i, s in enumerate(skus)]
    config = EmbedderConfig("test", "none", DIM, {"input_size": [3, 8, 8]})
    create_index_dir(index_dir, Manifest(config, "", "test"), products, images,
                     np.concatenate([unit(i, 2) for i in range(START_SKUS)]))
    return index_dir


def open_vector_index(index_dir: Path) -> ProductIndex:
    return ProductIndex(index_dir, read_manifest(index_dir))


def catalog_state(index_dir: Path) -> tuple[int, dict, dict]:
    """(generation, {image id: (sku, path)}, {sku: name}) of the catalog now."""
    db = CatalogDB(index_dir / "catalog.db")
    try:
        return (db.state().generation, {r["id"]: (r["sku"], r["path"]) for r in db.image_rows()},
                {p.sku: p.name for p in db.products(r["sku"] for r in db.image_rows()).values()})
    finally:
        db.close()


def generations(initial: tuple[int, dict, dict], log_path: Path) -> dict[int, tuple[dict, dict]]:
    """Generation -> ({image id: (sku, path)}, {sku: name}), from the initial state and the writer's log."""
    generation, images, names = initial
    states = {generation: (dict(images), dict(names))}
    for line in log_path.read_text().splitlines():
        step = json.loads(line)
        for image_id in step["removed"]:
            del images[image_id]
        for image_id, path in step["moved"].items():
            images[int(image_id)] = (images[int(image_id)][0], path)
        images.update({i: (sku, path) for i, sku, path in step["added"]})
        names.update(step["names"])
        states[step["generation"]] = (dict(images), dict(names))
    return states


def query_for(name: str) -> np.ndarray:
    """The stored vector of ``name``'s first image."""
    return unit(int(name[1:]) + (1000 if name.startswith("w") else 0), 2)[:1]


def fits(answer, state, query_sku: str, category: str | None) -> bool:
    """Whether ``answer`` is what ``state`` (one generation) can answer: every image, SKU, path and
    name of that generation, as many SKUs as it holds up to TOP_K, the query's own SKU first when
    that generation holds it."""
    images, names = state
    skus = {sku for sku, _ in images.values() if category is None or sku.startswith("w")}
    if len(answer) != min(TOP_K, len(skus)) or len({m.sku for m in answer}) != len(answer):
        return False
    if any(images.get(m.image_id) != (m.sku, m.image_path) or names[m.sku] != m.name for m in answer):
        return False
    return query_sku not in skus or answer[0].sku == query_sku


def read_in_rounds(index: ProductIndex, seed: int, writer_done: threading.Event, records: list, refreshes: list):
    """Refresh, ask 5 questions, again, until the writer is done and MIN_QUERIES were asked."""
    rng = np.random.default_rng(seed)
    asked = 0
    while asked < MIN_QUERIES or not writer_done.is_set():
        refreshes.append(index.refresh())
        for _ in range(5):
            step = index.generation - 2 + int(rng.integers(-WINDOW - 1, 2))  # near what the writer is doing
            name = str(rng.choice(["s00", "s01"])) if rng.random() < 0.3 else f"w{min(max(step, 0), STEPS - 1):03d}"
            how = ("search", "as_one", "category")[asked % 3]
            category = "W" if how == "category" else None
            before = index.generation
            if how == "as_one":
                answer = index.search_as_one(query_for(name), TOP_K)
            else:
                answer = index.search(query_for(name), TOP_K, category=category)[0]
            records.append((name, category, before, index.generation, answer))
            asked += 1
            time.sleep(0.005)


def checkpoint(index_dir: Path) -> tuple[int, int]:
    """(busy, bytes left in the WAL) after ``PRAGMA wal_checkpoint(TRUNCATE)``: busy is 1 when a
    reader's open transaction kept it from copying the WAL into the database and emptying it."""
    checker = sqlite3.connect(index_dir / "catalog.db", timeout=0.5)
    try:
        busy = checker.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    finally:
        checker.close()
    wal = index_dir / "catalog.db-wal"
    return busy, wal.stat().st_size if wal.exists() else 0


def test_threads_read_one_generation_each_while_another_process_writes(tmp_path):
    idx = build_vector_index(tmp_path / "idx")
    (tmp_path / "writer.py").write_text(WRITER)
    log_path = tmp_path / "writes.jsonl"
    index = open_vector_index(idx)
    initial = catalog_state(idx)
    first = index.generation
    writer = subprocess.Popen([sys.executable, str(tmp_path / "writer.py"), str(idx), str(log_path), str(STEPS),
                               str(WINDOW), str(DIM)], env={**os.environ, "PRODSEARCH_SNAPSHOT_CHANGES": "8"},
                              stderr=subprocess.PIPE)
    writer_done, records, refreshes = threading.Event(), [], []
    threading.Thread(target=lambda: (writer.wait(), writer_done.set()), daemon=True).start()
    while index.catalog.state().generation == first and not writer_done.is_set():
        time.sleep(0.05)  # the readers start once the writer writes
    errors = []

    def reader(seed):
        try:
            read_in_rounds(index, seed, writer_done, records, refreshes)
        except Exception as exc:  # noqa: BLE001  any failure of a reader is a bug
            errors.append(repr(exc))

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert writer.wait(timeout=60) == 0, writer.stderr.read().decode()
    assert not errors
    assert len(records) >= THREADS * MIN_QUERIES

    states = generations(initial, log_path)
    assert len(states) == STEPS + 1
    wrong = [(name, category, g0, g1, [(m.sku, m.image_id, m.name) for m in answer])
             for name, category, g0, g1, answer in records
             if not any(g in states and fits(answer, states[g], name, category) for g in range(g0, g1 + 1))]
    assert not wrong, wrong[:5]
    assert len({g0 for _, _, g0, _, _ in records}) >= 5  # the readers did move on...
    assert sum(refreshes) >= 5 and not all(refreshes)  # ...through refresh(), which says when it moved

    # Between calls no reader holds a transaction, stale or not: the WAL is copied back and emptied.
    assert checkpoint(idx) == (0, 0)
    index.refresh()
    assert index.generation == max(states) and not index.refresh()
    assert index.search(query_for(f"w{STEPS - 1:03d}"), 1)[0][0].sku == f"w{STEPS - 1:03d}"
    assert checkpoint(idx) == (0, 0)

    # The control: a read transaction held open, as each reader held one for its life before, blocks it.
    held = CatalogDB(idx / "catalog.db")
    held.begin_snapshot()
    with IndexWriter(idx, "test") as w:
        w.commit(remove=[int(index.image_ids[-1])])
    assert checkpoint(idx)[0] == 1
    held.close()
    assert checkpoint(idx) == (0, 0)
    index.close()


def test_a_stale_view_answers_from_its_generation(tmp_path):
    """Rows a writer removed stay in the reader's view until refresh; search_as_one, which reads
    stored vectors, answers from the newest generation once they are gone."""
    idx = build_vector_index(tmp_path / "idx")
    index = open_vector_index(idx)
    assert not index.refresh()
    with IndexWriter(idx, "test") as w:
        w.commit(remove=[0, 1], products=[{"sku": "s01", "name": "Renamed", "category": "T"}])  # s00 gone
    s00 = query_for("s00")
    assert index.generation == 1 and "s00" in index.skus
    top = index.search(s00, 1)[0][0]
    assert (top.sku, top.name, top.image_path) == ("s00", "S0", "/s/s00/0.jpg")
    assert index.products(["s00", "s01"])["s01"] == Product("s01", "S1", "S")
    assert len(index.images_in_category("S")) == 2 * START_SKUS
    fused = index.search_as_one(s00, 2)
    assert index.generation == 2 and fused[0].sku != "s00" and "s00" not in index.skus
    assert index.search(query_for("s01"), 1)[0][0].name == "Renamed"
    index.close()


@pytest.fixture(scope="module")
def photo_shop(tmp_path_factory):
    """A CSV catalog (6 SKUs in 3 categories, 2 photos each) and its index."""
    root = tmp_path_factory.mktemp("photos")
    rows = []
    for s, category in enumerate(["Fruit/Apple", "Fruit/Apple", "Fruit/Lime", "Dairy", "Dairy", "Bakery"]):
        for k in range(2):
            product_image(100 * s + k, 64).save(root / f"{s}_{k}.png")
            rows.append({"image": f"{s}_{k}.png", "sku": f"P{s}", "name": f"Product {s}", "category": category})
    build_index(write_csv(root / "catalog.csv", rows), root / "idx", model=create_embedder(img_size=64),
                num_workers=0)
    return root


def answer_key(result) -> tuple:
    matches = result if isinstance(result, list) else result.matches
    return tuple((m.sku, m.name, m.category, m.image_id, m.image_path) for m in matches)


def scores(result) -> list[float]:
    return [m.score for m in (result if isinstance(result, list) else result.matches)]


def test_a_thread_pool_gets_the_answers_of_sequential_calls(photo_shop):
    index = ProductIndex.open(photo_shop / "idx")
    photos = [str(photo_shop / f"{s}_0.png") for s in range(6)]
    vectors = index.embed(photos, num_workers=0).vectors
    calls = []
    for s, photo in enumerate(photos):
        calls += [lambda p=photo: index.query([p], num_workers=0)[0],
                  lambda p=photo: index.query([p], category="Fruit", num_workers=0)[0],
                  lambda s=s: index.search(vectors[s:s + 1], top_k=3)[0],
                  lambda s=s: index.search_as_one(vectors[s:s + 2], top_k=3, category="Dairy"),
                  lambda p=photo: index.query_as_one([p, photos[0]], top_k=4, num_workers=0)]
    sequential = [call() for call in calls]
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        threaded = list(pool.map(lambda call: call(), calls * 3))
    for i, got in enumerate(threaded):
        want = sequential[i % len(calls)]
        assert answer_key(got) == answer_key(want)
        assert np.allclose(scores(got), scores(want), atol=1e-5)
    assert answer_key(sequential[0])[0][0] == "P0"
    assert {m.category for m in sequential[1].matches} <= {"Fruit/Apple", "Fruit/Lime"}
    index.close()


def open_files(path: Path) -> int:
    return sum(os.path.realpath(f"/proc/self/fd/{fd}") == str(path.resolve()) for fd in os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files through /proc")
def test_connections_follow_threads_and_close_closes_them_all(tmp_path):
    idx = build_vector_index(tmp_path / "idx")
    index = open_vector_index(idx)
    before = open_files(idx / "catalog.db")
    for _ in range(6):  # a thread per request: the connection of an ended thread is closed by the next
        t = threading.Thread(target=index.search_as_one, args=(query_for("s03"),))
        t.start()
        t.join()
    assert open_files(idx / "catalog.db") <= before + 1
    with ThreadPoolExecutor(max_workers=3) as pool:
        catalogs = set(pool.map(lambda _: index.catalog, range(30)))
        assert index.catalog not in catalogs and 1 <= len(catalogs) <= 3
        index.close()
    for db in catalogs:
        with pytest.raises(sqlite3.ProgrammingError):
            db.db.execute("select 1")
    assert open_files(idx / "catalog.db") == before - 1
    with pytest.raises(ValueError, match="is closed"):
        index.search(query_for("s03"))
