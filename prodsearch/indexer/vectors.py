"""The vector index: FAISS, inner product on L2-normalised vectors (= cosine), ids = image ids.

:func:`create_vector_index` is the one place that chooses the index type, so approximate and GPU
indexes can be added without touching callers.
"""

from __future__ import annotations

import os

import faiss
import numpy as np

INDEX_TYPES = ("auto", "Flat")


def create_vector_index(dim: int, expected_count: int = 0, index_type: str = "auto") -> faiss.Index:
    """An empty index for ``dim``-d vectors.

    ``auto`` is exact search for every size today; ``expected_count`` is what a later choice of
    approximate index will depend on.
    """
    if index_type not in INDEX_TYPES:
        raise ValueError(f"unknown index type {index_type!r}; choose one of {', '.join(INDEX_TYPES)}")
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def index_type_name(index: faiss.Index) -> str:
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    return type(inner).__name__


def add_vectors(index: faiss.Index, vectors: np.ndarray, ids: np.ndarray) -> None:
    index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (similarities, ids), best first; id -1 pads rows when the index holds fewer than k."""
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def write_vector_index(index: faiss.Index, path: str | os.PathLike) -> None:
    faiss.write_index(index, os.fspath(path))


def read_vector_index(path: str | os.PathLike) -> faiss.Index:
    return faiss.read_index(os.fspath(path))
