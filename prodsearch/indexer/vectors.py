"""The vector index: FAISS, inner product on L2-normalised vectors (= cosine), ids = image ids.

:func:`create_vector_index` is the one place that chooses the index type
(:mod:`prodsearch.indexer.index_types` says which and why), so callers never name FAISS classes.
"""

from __future__ import annotations

import os

import faiss
import numpy as np

from prodsearch.indexer.index_types import create_index, resolve_index_type


def create_vector_index(dim: int, expected_count: int = 0, index_type: str = "auto") -> faiss.Index:
    """An empty (untrained, for IVF/PQ types) index for ``dim``-d vectors: ``auto`` picks the type
    from ``expected_count``; a FAISS factory string names one."""
    return create_index(resolve_index_type(index_type, expected_count, dim), dim)


def index_type_name(index: faiss.Index) -> str:
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    return type(inner).__name__


def add_vectors(index: faiss.Index, vectors: np.ndarray, ids: np.ndarray) -> None:
    index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))


def remove_vectors(index: faiss.Index, ids: np.ndarray) -> bool:
    """Remove ``ids`` in place; ``False`` where the index type cannot delete (graph indexes such as
    HNSW), and the caller rebuilds it from the stored vectors instead (compaction)."""
    try:
        index.remove_ids(np.asarray(ids, dtype=np.int64))
    except RuntimeError:
        return False
    return True


def vector_ids(index: faiss.Index) -> np.ndarray:
    """The ids stored in an id-mapped index."""
    return faiss.vector_to_array(index.id_map).astype(np.int64)


def search(index: faiss.Index, queries: np.ndarray, k: int,
           among: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (similarities, ids), best first; id -1 pads rows when fewer than k qualify.

    ``among`` (image ids) restricts the search itself to those vectors, through a FAISS ID selector
    that every index type honours, so a filtered top-k is never emptied by vectors outside it.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if among is None:
        return index.search(queries, k)
    selector = faiss.IDSelectorBatch(np.ascontiguousarray(among, dtype=np.int64))
    # faiss.contrib.torch_utils (imported by pytorch-metric-learning) swaps ``search`` for a version
    # without ``params``; it keeps FAISS's own numpy search as ``search_numpy``.
    numpy_search = getattr(index, "search_numpy", index.search)
    return numpy_search(queries, k, params=faiss.SearchParameters(sel=selector))


def write_vector_index(index: faiss.Index, path: str | os.PathLike) -> None:
    """Write ``index`` durably: to a temporary name, flushed to disk, then renamed into place."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    faiss.write_index(index, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_vector_index(path: str | os.PathLike) -> faiss.Index:
    return faiss.read_index(os.fspath(path))


def set_search_threads(threads: int) -> None:
    """FAISS's OpenMP threads in this process. A server answering one photo at a time wants 1: a
    single query gains nothing from more (100k IVF vectors, 2 cores: p50 0.98 ms with 1 thread, 1.02
    with 2; beside a running embedder 1.26 and 1.19: ``benchmarks/serve_load.py --threads-check``),
    and the other cores are left to the model."""
    faiss.omp_set_num_threads(max(1, int(threads)))
