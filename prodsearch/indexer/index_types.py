"""Which FAISS index a catalog gets, and how it is created, trained and tuned.

``auto`` follows the catalog size (measured in ``../shared/notes/vector-search-baselines.md``):

- below 100,000 vectors: ``Flat``, exact search;
- below 2,000,000: ``IVF{nlist},SQfp16``, inverted lists over the vectors kept as float16 (recall@1
  1.000 against float32 search in the benchmarks), half the memory of float32 and twice the
  batched queries/s of ``IVF{nlist},Flat`` at 1M on 2 cores (6,200 against 3,000). The default
  nprobe 16 is what real embeddings need (Grocery Store photos: recall@1 0.984-1.000 at nprobe 8,
  0.998-1.000 at 16, ``benchmarks/tune_search.py``); synthetic clusters would do with 2;
- from 2,000,000 (Cdiscount's 12.4M): ``IVF{nlist}_HNSW32,PQ{m},Refine(SQ8)``, product-quantised
  codes for the shortlist, re-ranked on 8-bit scalar-quantised vectors (PQ codes alone cannot rank
  near-duplicates: recall@1 0.43 without re-ranking, 0.97 with it), about 600 bytes per vector.
  The inverted lists are found through an HNSW graph over the centroids: assigning 12.4M vectors
  to lists by brute force takes about 18 minutes on 2 cores. At most :data:`MAX_NLIST` lists:
  k-means costs grow with the square of the list count.

Any FAISS factory string is accepted too (``HNSW32,Flat``, ``IVF4096,PQ32``). Every index is wrapped
in ``IndexIDMap2`` so ids are image ids whatever the type. Removal: flat and IVF indexes delete in
place; graph (HNSW) and refine indexes cannot, and the caller rebuilds them from the stored vectors
(:func:`prodsearch.indexer.vectors.remove_vectors` says which).
"""

from __future__ import annotations

import math
import re

import faiss
import numpy as np

from prodsearch.errors import IndexTypeError

EXACT_LIMIT = 100_000
PQ_LIMIT = 2_000_000
MAX_NLIST = 8192
TRAIN_POINTS_PER_LIST = 64  # k-means sample per inverted list (FAISS warns below 39)
SEARCH_DEFAULTS = {"nprobe": 16, "efSearch": 128, "k_factor_rf": 4}


def nlist_for(count: int) -> int:
    """Inverted lists for ``count`` vectors: about 4 sqrt(n), a power of two (100k -> 1024, 1M -> 4096),
    at most :data:`MAX_NLIST`."""
    return min(MAX_NLIST, 1 << max(4, round(math.log2(4 * math.sqrt(max(count, 1))))))


def pq_subquantizers(dim: int) -> int:
    """The largest of 64, 32, 16, 8 that divides ``dim`` (bytes per PQ code)."""
    for m in (64, 32, 16, 8):
        if dim % m == 0:
            return m
    raise IndexTypeError(f"no PQ code size divides the embedding size {dim}; choose --index-type Flat or IVF...,Flat")


def choose_index_type(count: int, dim: int) -> str:
    """The factory string ``auto`` means for ``count`` vectors of ``dim`` dimensions."""
    if count < EXACT_LIMIT:
        return "Flat"
    if count < PQ_LIMIT:
        return f"IVF{nlist_for(count)},SQfp16"
    return f"IVF{nlist_for(count)}_HNSW32,PQ{pq_subquantizers(dim)},Refine(SQ8)"


def resize_index_type(requested: str, built: str, count: int, dim: int) -> str:
    """The factory string a rebuild for ``count`` vectors uses: ``auto`` chooses again by size, an
    IVF type keeps its kind with the list count for the new size (a catalog that grew 100x needs
    10x the lists), any other type stays as built."""
    if requested == "auto":
        return choose_index_type(count, dim)
    match = re.fullmatch(r"IVF(\d+)(.*)", built)
    return f"IVF{nlist_for(count)}{match.group(2)}" if match else built


def deletes_in_place(spec: str) -> bool:
    """Whether an index of factory string ``spec`` removes vectors itself; graph indexes (HNSW) and
    re-ranked ones (Refine) are rebuilt from the stored vectors instead."""
    return not spec.startswith("HNSW") and "Refine" not in spec


def resolve_index_type(spec: str, count: int, dim: int) -> str:
    """``auto`` resolved by size; any other string checked by building it once (empty)."""
    spec = choose_index_type(count, dim) if spec == "auto" else spec
    try:
        faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise IndexTypeError(f"FAISS cannot build index type {spec!r} for {dim}-d vectors ({_first_line(exc)}); "
                             "use auto, Flat, HNSW32,Flat, IVF4096,Flat or IVF4096,PQ64,Refine(SQ8)") from None
    return spec


def create_index(spec: str, dim: int) -> faiss.IndexIDMap2:
    """An empty id-mapped index of factory string ``spec`` (inner product on normalised vectors)."""
    inner = faiss.IndexFlatIP(dim) if spec == "Flat" else faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    index = faiss.IndexIDMap2(inner)
    set_search_params(index)
    return index


def training_rows(index: faiss.Index, count: int, seed: int = 0) -> np.ndarray:
    """Sorted positions, among ``count`` vectors, of the random sample IVF / PQ training uses:
    k-means over millions adds nothing but time. All of them when there are few."""
    sample = max(_nlist(index) * TRAIN_POINTS_PER_LIST, 10_000)
    if count <= sample:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, sample, replace=False))


def train_index(index: faiss.Index, vectors: np.ndarray, seed: int = 0) -> None:
    """Train an index that needs it (IVF, PQ) on the random sample of ``vectors`` that
    :func:`training_rows` picks."""
    if index.is_trained:
        return
    lists = _nlist(index)
    if len(vectors) < lists:
        raise IndexTypeError(f"an index with {lists} inverted lists needs at least {lists} vectors to train, "
                             f"not {len(vectors)}; use a smaller IVF or --index-type Flat")
    rows = training_rows(index, len(vectors), seed)
    index.train(np.ascontiguousarray(vectors if len(rows) == len(vectors) else vectors[rows], dtype=np.float32))


def set_search_params(index: faiss.Index, **params: int) -> None:
    """Set nprobe / efSearch / k_factor_rf (defaults :data:`SEARCH_DEFAULTS`) where the index has them."""
    space = faiss.ParameterSpace()
    for name, value in {**SEARCH_DEFAULTS, **params}.items():
        try:
            space.set_index_parameter(index, name, value)
        except RuntimeError:
            pass  # this index type has no such parameter


def _nlist(index: faiss.Index) -> int:
    """The inverted lists inside an (id-mapped, refined) index, 1 for other types."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    if isinstance(inner, faiss.IndexRefine):
        inner = faiss.downcast_index(inner.base_index)
    ivf = faiss.try_extract_index_ivf(inner)
    return ivf.nlist if ivf is not None else 1


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
