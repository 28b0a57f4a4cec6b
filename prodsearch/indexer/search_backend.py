"""One search interface, whatever holds the vectors.

:class:`ProductIndex` ranks SKUs over a :class:`VectorSearch`: the ``k`` nearest neighbours of a
batch of vectors, optionally among a set of image ids, plus count, add and remove. Behind it sit a
FAISS index on the CPU or, with faiss-gpu, on the GPU (:class:`FaissSearch`), and the exact torch
search (:class:`~prodsearch.indexer.torch_search.TorchExactIndex`) for CUDA machines without
faiss-gpu; :func:`~prodsearch.indexer.placement.place_for_search` chooses; and a Milvus collection
(:class:`~prodsearch.indexer.milvus.MilvusSearch`), which filters by fields inside the search.

A restriction comes two ways at once: ``among``, the image ids that may answer (what FAISS and torch
select by), and ``where``, the same set described by fields (a category subtree, SKUs left out), for
a store that keeps those fields and should not be sent a million ids.
"""

from __future__ import annotations

import threading
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import faiss
import numpy as np

from prodsearch.indexer.vectors import add_vectors, remove_vectors, search


@dataclass(frozen=True)
class Where:
    """A restriction by fields: the products under ``category`` (whose categories, exactly, are
    ``categories``), never those of ``without_skus``."""

    category: str | None = None
    categories: tuple[str, ...] = ()
    without_skus: frozenset[str] = frozenset()


@runtime_checkable
class VectorSearch(Protocol):
    """Numpy in, numpy out; ids are image ids. ``search`` returns (similarities, ids), best first,
    id -1 padding rows where fewer than ``k`` vectors (of ``among``) qualify. ``where`` describes
    ``among`` by fields; stores without fields ignore it."""

    @property
    def ntotal(self) -> int: ...

    def search(self, queries: np.ndarray, k: int, among: np.ndarray | None = None,
               where: Where | None = None) -> tuple[np.ndarray, np.ndarray]: ...

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None: ...

    def remove(self, ids: np.ndarray) -> bool:
        """Remove ``ids``; ``False`` where the store cannot delete (the caller rebuilds it)."""


class FaissSearch:
    """A FAISS index behind :class:`VectorSearch`. CPU indexes may be searched by many threads at
    once; a GPU index (``on_gpu``) is searched by one at a time, as FAISS requires of its GPU
    resources."""

    def __init__(self, index: faiss.Index, *, on_gpu: bool = False):
        self.index = index
        self.on_gpu = on_gpu
        self._lock = threading.Lock() if on_gpu else nullcontext()

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    def search(self, queries: np.ndarray, k: int, among: np.ndarray | None = None,
               where: Where | None = None) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            return search(self.index, queries, k, among)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        with self._lock:
            add_vectors(self.index, vectors, ids)

    def remove(self, ids: np.ndarray) -> bool:
        with self._lock:
            return remove_vectors(self.index, ids)
