"""The torch exact search (the GPU path without faiss-gpu) returns FAISS flat's neighbours."""

import numpy as np
import pytest
import torch

from prodsearch.indexer.torch_search import TorchExactIndex
from prodsearch.indexer.vectors import add_vectors, create_vector_index, search

from conftest import clustered_vectors


@pytest.mark.parametrize("chunk", [97, 1000, 1 << 20])
def test_equals_faiss_flat_on_cpu(chunk):
    rng = np.random.default_rng(0)
    base, queries = clustered_vectors(2500, 64, rng, clusters=50), clustered_vectors(40, 64, rng, clusters=50)
    ids = rng.permutation(10_000)[:2500].astype(np.int64)
    flat = create_vector_index(64)
    add_vectors(flat, base, ids)
    expected_scores, expected_ids = search(flat, queries, 10)
    scores, found = TorchExactIndex(base, ids, chunk=chunk).search(queries, 10)
    assert np.array_equal(found, expected_ids)
    assert np.allclose(scores, expected_scores, atol=1e-5)


def test_fewer_vectors_than_k_pads_like_faiss():
    rng = np.random.default_rng(1)
    base = clustered_vectors(3, 8, rng, clusters=50)
    scores, found = TorchExactIndex(base, np.array([5, 6, 7]), chunk=2).search(base[:1], 5)
    assert found[0, 0] == 5 and sorted(found[0, :3]) == [5, 6, 7] and list(found[0, 3:]) == [-1, -1]
    assert np.isinf(scores[0, 3:]).all()


def test_half_precision_keeps_the_nearest_neighbour():
    """bfloat16 (what a GPU would hold) on the CPU: the top-1 is almost always FAISS's."""
    rng = np.random.default_rng(2)
    base, queries = clustered_vectors(3000, 64, rng, clusters=50), clustered_vectors(200, 64, rng, clusters=50)
    exact = np.argmax(queries @ base.T, axis=1)
    _, found = TorchExactIndex(base, np.arange(3000), dtype=torch.bfloat16, chunk=512).search(queries, 10)
    assert np.mean(found[:, 0] == exact) >= 0.95 and np.mean([e in row for e, row in zip(exact, found)]) == 1.0


def test_product_index_answers_the_same_with_the_torch_search(tmp_path):
    """The whole ranking (SKUs, categories, fused photos) on the torch path equals the FAISS path."""
    from prodsearch.indexer import ProductIndex
    from prodsearch.indexer.manifest import read_manifest

    from conftest import write_vectors_index

    rng = np.random.default_rng(3)
    vectors = clustered_vectors(400, 16, rng, clusters=50)
    owners = [f"s{i % 40:02d}" for i in range(400)]
    products = [{"sku": f"s{i:02d}", "name": "", "category": "A/B" if i % 3 else "C"} for i in range(40)]
    faiss_index = write_vectors_index(tmp_path / "idx", owners, vectors, products)
    torch_index = ProductIndex(tmp_path / "idx", read_manifest(tmp_path / "idx"), search_backend="torch")
    assert type(torch_index.vectors).__name__ == "TorchExactIndex" and len(torch_index) == 400
    queries = clustered_vectors(20, 16, rng, clusters=50)
    same = lambda a, b: [(m.sku, m.image_id) for m in a] == [(m.sku, m.image_id) for m in b]  # noqa: E731
    assert all(same(a, b) for a, b in zip(faiss_index.search(queries, 5), torch_index.search(queries, 5)))
    assert all(same(a, b) for a, b in zip(faiss_index.search(queries, 5, category="C"),
                                          torch_index.search(queries, 5, category="C")))
    assert same(faiss_index.search_as_one(queries[:3], 5), torch_index.search_as_one(queries[:3], 5))


@pytest.mark.parametrize("factory,on_gpu", [("Flat", True), ("IVF1024,Flat", True), ("IVF1024,SQfp16", True),
                                            ("IVF4096,PQ64", True), ("HNSW32,Flat", False),
                                            ("IVF4096_HNSW32,PQ64,Refine(SQ8)", False), ("IVF1024,PQ64,Refine(SQ8)", False)])
def test_faiss_gpu_receives_only_the_types_it_can_hold(monkeypatch, factory, on_gpu):
    """With faiss-gpu and a GPU (both faked here), only GPU-capable types are moved; the others stay
    on FAISS's CPU index. Without a GPU nothing moves."""
    import faiss
    import torch

    from prodsearch.indexer.placement import place_for_search

    cpu_index = object()
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", lambda index: ("gpu", index), raising=False)
    stored = lambda: pytest.fail("the stored vectors are read only for the torch search")  # noqa: E731
    placed = place_for_search(cpu_index, stored, factory, torch.device("cuda"))
    assert (placed.index, placed.on_gpu) == ((("gpu", cpu_index), True) if on_gpu else (cpu_index, False))
    assert place_for_search(cpu_index, stored, factory, torch.device("cpu")).index is cpu_index
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)  # faiss-cpu: flat indexes go to torch, others stay
    if factory != "Flat":
        assert place_for_search(cpu_index, stored, factory, torch.device("cuda")).index is cpu_index


def test_every_backend_implements_the_search_interface():
    """FAISS and torch behind one interface: the same neighbours after the same adds and removals."""
    from prodsearch.indexer.search_backend import FaissSearch, VectorSearch

    rng = np.random.default_rng(5)
    base, more, queries = (clustered_vectors(n, 16, rng) for n in (300, 50, 10))
    faiss_search = FaissSearch(create_vector_index(16))
    faiss_search.add(base, np.arange(300))
    torch_search = TorchExactIndex(base, np.arange(300), chunk=64)
    for backend in (faiss_search, torch_search):
        assert isinstance(backend, VectorSearch)
        backend.add(more, np.arange(1000, 1050))
        assert backend.remove(np.arange(0, 300, 2)) and backend.ntotal == 200
    among = np.arange(1, 300, 4)
    for args in ((queries, 5), (queries, 5, among)):
        (fs, fi), (ts, ti) = faiss_search.search(*args), torch_search.search(*args)
        assert np.array_equal(fi, ti) and np.allclose(fs, ts, atol=1e-5)
    assert not np.isin(fi, np.arange(0, 300, 2)).any()
