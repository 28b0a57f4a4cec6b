"""The torch exact search (the GPU path without faiss-gpu) returns FAISS flat's neighbours."""

import numpy as np
import pytest
import torch

from prodsearch.indexer.torch_search import TorchExactIndex
from prodsearch.indexer.vectors import add_vectors, create_vector_index, search


def clustered(n, dim, rng, clusters=50):
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("chunk", [97, 1000, 1 << 20])
def test_equals_faiss_flat_on_cpu(chunk):
    rng = np.random.default_rng(0)
    base, queries = clustered(2500, 64, rng), clustered(40, 64, rng)
    ids = rng.permutation(10_000)[:2500].astype(np.int64)
    flat = create_vector_index(64)
    add_vectors(flat, base, ids)
    expected_scores, expected_ids = search(flat, queries, 10)
    scores, found = TorchExactIndex(base, ids, chunk=chunk).search(queries, 10)
    assert np.array_equal(found, expected_ids)
    assert np.allclose(scores, expected_scores, atol=1e-5)


def test_fewer_vectors_than_k_pads_like_faiss():
    rng = np.random.default_rng(1)
    base = clustered(3, 8, rng)
    scores, found = TorchExactIndex(base, np.array([5, 6, 7]), chunk=2).search(base[:1], 5)
    assert found[0, 0] == 5 and sorted(found[0, :3]) == [5, 6, 7] and list(found[0, 3:]) == [-1, -1]
    assert np.isinf(scores[0, 3:]).all()


def test_half_precision_keeps_the_nearest_neighbour():
    """bfloat16 (what a GPU would hold) on the CPU: the top-1 is almost always FAISS's."""
    rng = np.random.default_rng(2)
    base, queries = clustered(3000, 64, rng), clustered(200, 64, rng)
    exact = np.argmax(queries @ base.T, axis=1)
    _, found = TorchExactIndex(base, np.arange(3000), dtype=torch.bfloat16, chunk=512).search(queries, 10)
    assert np.mean(found[:, 0] == exact) >= 0.95 and np.mean([e in row for e, row in zip(exact, found)]) == 1.0
