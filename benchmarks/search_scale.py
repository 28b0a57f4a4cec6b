"""Vector search at catalog scale: prodsearch's chosen index against the alternatives, side by side.

Synthetic clustered vectors shaped like real embeddings (N/10 near-duplicate clusters under N/1000
super-clusters, L2-normalised), 1,000 queries drawn from the same clusters. For each size and
method: build time, index bytes per vector, recall@1 / recall@10 against exact search, batched
queries/s, single-query queries/s and p50 / p99 latency. hnswlib and usearch are measured when
installed (`pip install '.[bench]'`).

    python benchmarks/search_scale.py                       # 100k and 1M vectors, d = 512
    python benchmarks/search_scale.py --sizes 100000 --dim 1280
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import time
from collections.abc import Callable

import faiss
import numpy as np

from prodsearch.eval.report import markdown_table
from prodsearch.indexer.index_types import choose_index_type, train_index
from prodsearch.indexer.vectors import add_vectors, create_vector_index, search

Search = Callable[[np.ndarray, int], np.ndarray]  # queries, k -> ids


def clustered(n: int, dim: int, seed: int, chunk: int = 200_000) -> np.ndarray:
    """n vectors in n/10 clusters under n/1000 super-clusters, normalised (generated in chunks)."""
    rng = np.random.default_rng(seed)
    supers = rng.normal(size=(max(1, n // 1000), dim)).astype(np.float32)
    centres = supers[rng.integers(0, len(supers), max(1, n // 10))] + 0.5 * rng.normal(size=(max(1, n // 10), dim)).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = centres[rng.integers(0, len(centres), m)] + 0.35 * rng.normal(size=(m, dim)).astype(np.float32)
        out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def queries_like(base: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    """Queries near catalog vectors (noise of norm about 0.3), like new photos of known products."""
    noise = rng.normal(size=(n, base.shape[1])).astype(np.float32) * (0.3 / np.sqrt(base.shape[1]))
    q = base[rng.integers(0, len(base), n)] + noise
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def measure(name: str, build: Callable[[], tuple[Search, int]], queries: np.ndarray, truth: np.ndarray,
            singles: int) -> dict:
    start = time.perf_counter()
    run, nbytes = build()
    built = time.perf_counter() - start
    start = time.perf_counter()
    found = run(queries, 10)
    batch_qps = len(queries) / (time.perf_counter() - start)
    times = []
    for q in queries[:singles]:
        start = time.perf_counter()
        run(q[None], 10)
        times.append(time.perf_counter() - start)
    recall1 = float(np.mean(found[:, 0] == truth[:, 0]))
    recall10 = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]))
    ms = sorted(1000 * t for t in times)
    return {"method": name, "build s": built, "B/vec": nbytes, "R@1": recall1, "R@10": recall10,
            "batch QPS": batch_qps, "single QPS": 1000 / statistics.mean(ms), "p50 ms": statistics.median(ms),
            "p99 ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))]}


def faiss_method(base: np.ndarray, spec: str) -> Callable[[], tuple[Search, int]]:
    def build():
        index = create_vector_index(base.shape[1], len(base), spec)
        train_index(index, base)
        add_vectors(index, base, np.arange(len(base)))
        return (lambda q, k: search(index, q, k)[1]), len(faiss.serialize_index(index)) // len(base)
    return build


def numpy_method(base: np.ndarray) -> Callable[[], tuple[Search, int]]:
    def run(q, k):
        sims = q @ base.T
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        return np.take_along_axis(top, np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1), axis=1)
    return lambda: (run, base.shape[1] * 4)


def hnswlib_method(base: np.ndarray, ef_construction: int = 200, ef: int = 128):
    import hnswlib

    def build():
        index = hnswlib.Index(space="ip", dim=base.shape[1])
        index.init_index(max_elements=len(base), ef_construction=ef_construction, M=32)
        index.add_items(base, np.arange(len(base)))
        index.set_ef(ef)
        return (lambda q, k: index.knn_query(q, k=k)[0].astype(np.int64)), index.index_file_size() // len(base)
    return build


def usearch_method(base: np.ndarray, ef: int = 128):
    from usearch.index import Index

    def build():
        index = Index(ndim=base.shape[1], metric="ip", dtype="f16", connectivity=32, expansion_add=200,
                      expansion_search=ef)
        index.add(np.arange(len(base)), base)
        return (lambda q, k: np.atleast_2d(index.search(q, k).keys).astype(np.int64)), index.memory_usage // len(base)
    return build


def run_size(n: int, dim: int, n_queries: int, singles: int) -> list[dict]:
    base = clustered(n, dim, seed=n)
    queries = queries_like(base, n_queries, seed=1)
    exact = create_vector_index(dim, 0, "Flat")
    add_vectors(exact, base, np.arange(n))
    truth = search(exact, queries, 10)[1]
    chosen = choose_index_type(n, dim)
    methods: list[tuple[str, Callable]] = [(f"prodsearch auto ({chosen})", faiss_method(base, "auto")),
                                           ("faiss Flat (exact)", faiss_method(base, "Flat"))]
    if n * dim * 4 < 8e9:
        methods.append(("numpy brute force", numpy_method(base)))
    for name, make in (("hnswlib M32 efC200 ef128", hnswlib_method), ("usearch f16 M32 ef128", usearch_method)):
        try:
            methods.append((name, make(base)))
        except ImportError:
            logging.warning("%s is not installed (pip install '.[bench]'): skipped", name.split()[0])
    rows = []
    for name, build in methods:
        row = measure(name, build, queries, truth, singles)
        rows.append({"vectors": n, **row})
        print(markdown_table([rows[-1]]).splitlines()[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--singles", type=int, default=200, help="queries timed one at a time")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"{platform.machine()}, faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, d = {args.dim}")
    rows = []
    for n in args.sizes:
        rows += run_size(n, args.dim, args.queries, args.singles)
    print()
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
