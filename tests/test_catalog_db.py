"""The catalog stores vectors as float16 and reads them as float32, also from catalogs written before
(float32 blobs) and from ones holding both kinds; search ranks as it does on float32."""

import numpy as np
import pytest

from prodsearch.errors import IndexDirError
from prodsearch.indexer import ProductIndex
from prodsearch.indexer.catalog_db import CatalogDB
from prodsearch.indexer.info import index_info
from prodsearch.indexer.manifest import read_manifest
from prodsearch.indexer.store import rebuild_vectors, sampled_vectors, snapshot_path
from prodsearch.indexer.vectors import add_vectors, create_vector_index, search, write_vector_index
from prodsearch.indexer.writer import IndexWriter

from conftest import clustered_vectors, image_rows, plain_sku_ranking, unprivileged, write_vectors_index

DIM = 16


@pytest.fixture
def data() -> tuple[np.ndarray, list[str]]:
    """300 vectors of 60 SKUs (5 images each)."""
    return clustered_vectors(300, DIM, np.random.default_rng(0), clusters=50), [f"s{i % 60:02d}" for i in range(300)]


def stored_lengths(db: CatalogDB) -> list[int]:
    return [r[0] for r in db.db.execute("select length(vector) from vectors order by id")]


def store_as_float32(db: CatalogDB, ids, vectors: np.ndarray) -> None:
    """Rewrite stored vectors as float32 blobs, as indexes written before float16 storage hold them."""
    with db.db.atomic():
        db.db.conn.executemany("update vectors set vector = ? where id = ?",
                               [(np.float32(v).tobytes(), int(i)) for i, v in zip(ids, vectors)])


def test_new_vectors_are_stored_as_float16_and_read_as_float32(tmp_path, data):
    vectors, owners = data
    write_vectors_index(tmp_path / "idx", owners, vectors)
    db = CatalogDB(tmp_path / "idx" / "catalog.db")
    assert set(stored_lengths(db)) == {2 * DIM}
    ids, read = db.all_vectors(DIM)
    assert np.array_equal(ids, np.arange(300)) and read.dtype == np.float32
    assert np.abs(read - vectors).max() < 1e-3
    some = [7, 3, 250, 3]
    assert db.vectors(some, DIM).dtype == np.float32 and np.array_equal(db.vectors(some, DIM), read[some])
    assert db.vectors([], DIM).shape == (0, DIM)
    info = index_info(tmp_path / "idx")
    assert (info.stored_dtype, info.stored_bytes_per_image) == ("float16", 2 * DIM)


def test_the_catalog_file_is_about_half_of_float32(tmp_path):
    """SQLite pages hold float16 rows of the default model's size (1280-d) without much waste."""
    n, dim = 1000, 1280
    vectors = clustered_vectors(n, dim, np.random.default_rng(2))
    write_vectors_index(tmp_path / "idx", [f"s{i % 50}" for i in range(n)], vectors).close()
    assert (tmp_path / "idx" / "catalog.db").stat().st_size < 0.65 * n * 4 * dim  # float32 blobs alone took n * 4 * dim


def test_an_old_float32_catalog_still_reads_and_searches(tmp_path, data):
    vectors, owners = data
    idx = tmp_path / "idx"
    write_vectors_index(idx, owners, vectors).close()
    db = CatalogDB(idx / "catalog.db")
    store_as_float32(db, range(300), vectors)
    write_vector_index(rebuild_vectors(db, DIM), snapshot_path(idx, db.state().snapshot))  # as it was built
    assert set(stored_lengths(db)) == {4 * DIM}
    assert np.array_equal(db.all_vectors(DIM)[1], vectors) and np.array_equal(db.vectors([9, 2], DIM), vectors[[9, 2]])
    info = index_info(idx)
    assert info.consistent and (info.stored_dtype, info.stored_bytes_per_image) == ("float32", 4 * DIM)
    queries = clustered_vectors(10, DIM, np.random.default_rng(1), clusters=50)
    for backend in (None, "torch"):  # torch reads every stored vector at once
        index = ProductIndex(idx, read_manifest(idx), search_backend=backend)
        for q, matches in zip(queries, index.search(queries, 5)):
            expected = plain_sku_ranking(q, vectors, owners, 5)
            assert [m.sku for m in matches] == [s for s, _ in expected]
            assert np.allclose([m.score for m in matches], [v for _, v in expected], atol=1e-5)  # float32 exactly
        assert [m.sku for m in index.search_as_one(queries[:1], 5)] == [m.sku for m in index.search(queries[:1], 5)[0]]


def test_a_mixed_catalog_reads_each_row_by_its_own_dtype(tmp_path, data):
    """An old float32 index that got new (float16) images holds both kinds of blob."""
    vectors, owners = data
    idx = tmp_path / "idx"
    write_vectors_index(idx, owners[:200], vectors[:200]).close()
    db = CatalogDB(idx / "catalog.db")
    store_as_float32(db, range(0, 200, 2), vectors[:200:2])  # interleaved: float32, float16, float32...
    with IndexWriter(idx, "add") as writer:
        assert writer.commit(images=image_rows(owners)[200:], vectors=vectors[200:]).added_ids == list(range(200, 300))
    assert stored_lengths(db) == [4 * DIM, 2 * DIM] * 100 + [2 * DIM] * 100
    ids, read = db.all_vectors(DIM)
    assert np.array_equal(ids, np.arange(300)) and np.array_equal(read[:200:2], vectors[:200:2])
    assert np.abs(read - vectors).max() < 1e-3
    some = [299, 4, 5, 200, 0]
    assert np.array_equal(db.vectors(some, DIM), read[some])
    info = index_info(idx)
    assert info.consistent and info.stored_dtype == "float16+float32"
    assert info.stored_bytes_per_image == (100 * 4 * DIM + 200 * 2 * DIM) / 300
    index = ProductIndex(idx, read_manifest(idx))  # its snapshot lacks the new images: read from the catalog
    assert len(index) == 300 and index.search(vectors[250:251], 1)[0][0].image_id == 250


def test_a_stored_vector_of_another_size_is_a_clear_error(tmp_path, data):
    vectors, owners = data
    write_vectors_index(tmp_path / "idx", owners, vectors).close()
    db = CatalogDB(tmp_path / "idx" / "catalog.db")
    with db.db.atomic():
        db.db.execute("update vectors set vector = ? where id = 4", [b"\0" * 3 * DIM])
    message = r"catalog.db is damaged: the stored vector of image 4 is 48 bytes .* 32 bytes \(float16\) or 64"
    for read in (lambda: db.all_vectors(DIM), lambda: db.vectors([1, 4], DIM)):
        with pytest.raises(IndexDirError, match=message):
            read()
    assert "1 stored vectors are neither float16 nor float32 16-d vectors" in index_info(tmp_path / "idx").problems


def test_float16_storage_ranks_like_exact_float32(tmp_path):
    """Where similarities are further apart than float16's error (5e-4), the index ranks every image
    and SKU as an exact float32 search does. Each query weighs 64 orthonormal catalog vectors with
    its own order of weights 0.003 apart."""
    rng = np.random.default_rng(5)
    vectors = np.linalg.qr(rng.normal(size=(64, 64)))[0].astype(np.float32)  # orthonormal rows
    owners = [f"s{i % 16:02d}" for i in range(64)]
    weights = np.stack([rng.permutation(np.linspace(1.0, 0.05, 64)) for _ in range(20)])
    queries = ((weights / np.linalg.norm(weights, axis=1, keepdims=True)) @ vectors).astype(np.float32)
    exact = create_vector_index(64)
    add_vectors(exact, vectors, np.arange(64))
    exact_scores, exact_ids = search(exact, queries, 64)
    assert np.diff(exact_scores, axis=1).max() < -3e-3  # well separated: no near ties to flip
    index = write_vectors_index(tmp_path / "idx", owners, vectors)
    scores, ids = index.vectors.search(queries, 64)
    assert np.array_equal(ids, exact_ids) and np.abs(scores - exact_scores).max() < 1e-3
    for q, matches in zip(queries, index.search(queries, 16)):
        assert [m.sku for m in matches] == [s for s, _ in plain_sku_ranking(q, vectors, owners, 16)]


def test_rebuild_streams_the_vectors_in_chunks(tmp_path, data, monkeypatch):
    """A rebuild gathers its training sample and adds the vectors a chunk at a time, never all at
    once, and gives the same index as one built from every vector in memory."""
    vectors, owners = data
    write_vectors_index(tmp_path / "idx", owners, vectors)
    db = CatalogDB(tmp_path / "idx" / "catalog.db")
    chunks = list(db.vector_chunks(DIM, rows=64))
    assert [len(ids) for ids, _ in chunks] == [64, 64, 64, 64, 44]
    ids, read = db.all_vectors(DIM)
    assert np.array_equal(np.concatenate([i for i, _ in chunks]), ids)
    assert np.array_equal(np.concatenate([v for _, v in chunks]), read)
    assert np.array_equal(db.vector_ids(), ids)
    fetched = count_rows_decoded(monkeypatch)
    chunked = CatalogDB.vector_chunks
    monkeypatch.setattr(CatalogDB, "vector_chunks", lambda self, dim: chunked(self, dim, rows=64))
    monkeypatch.setattr("prodsearch.indexer.store.training_rows", lambda index, count, seed=0: np.arange(0, count, 3))
    for spec in ("Flat", "IVF8,SQfp16"):
        fetched.clear()
        rebuilt = rebuild_vectors(db, DIM, spec)
        # every read is one chunk, never all 300: a pass that gathers the training sample, one that adds
        assert fetched == ([] if spec == "Flat" else [64, 64, 64, 64, 44]) + [64, 64, 64, 64, 44]
        exact = create_vector_index(DIM, 0, "Flat")
        add_vectors(exact, read, ids)
        assert rebuilt.ntotal == 300
        assert np.mean(search(rebuilt, read, 1)[1][:, 0] == search(exact, read, 1)[1][:, 0]) > 0.95
    assert np.array_equal(sampled_vectors(db, ids[::3], DIM), read[::3])  # the sample: exactly those rows


def count_rows_decoded(monkeypatch) -> list[int]:
    """Rows of every vector read from the catalog, call by call."""
    fetched, decode = [], CatalogDB._decode

    def counting(self, ids, blobs, dim):
        fetched.append(len(blobs))
        return decode(self, ids, blobs, dim)

    monkeypatch.setattr(CatalogDB, "_decode", counting)
    return fetched


def test_reader_that_cannot_write_sees_a_writers_uncommitted_wal(public_tmp, data):
    """A folder this user cannot write, while another user's writer has WAL files beside the
    database: read-only mode honours the WAL, so the reader sees the writer's last commit."""
    import sqlite3

    vectors, owners = data
    write_vectors_index(public_tmp / "idx", owners, vectors).close()
    writer = sqlite3.connect(public_tmp / "idx" / "catalog.db")
    writer.execute("PRAGMA wal_autocheckpoint = 0")
    writer.execute("update products set name = 'Renamed' where sku = 's00'")
    writer.commit()
    try:
        for path in (public_tmp / "idx").iterdir():
            path.chmod(0o644)
        with unprivileged():
            index = ProductIndex(public_tmp / "idx", read_manifest(public_tmp / "idx"))
            assert index.products(["s00"])["s00"].name == "Renamed"
            index.close()
        (public_tmp / "idx" / "catalog.db-shm").unlink()  # a WAL without its index: cannot be read safely
        with unprivileged(), pytest.raises(IndexDirError, match=r"is read-only and catalog.db-wal holds changes not yet "
                                                                r"folded into catalog.db; open it once where it can be written"):
            CatalogDB(public_tmp / "idx" / "catalog.db")
    finally:
        writer.close()
