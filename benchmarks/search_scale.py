"""Vector search at catalog scale: prodsearch's chosen index against the alternatives, side by side.

Synthetic clustered vectors shaped like real embeddings (N/10 near-duplicate clusters under N/1000
super-clusters, L2-normalised), 1,000 queries drawn from the same clusters. For each size and
method: build time, index bytes per vector, recall@1 / recall@10 against exact search, batched
queries/s, single-query queries/s and p50 / p99 latency. hnswlib and usearch are measured when
installed (`pip install '.[bench]'`); Milvus Lite (FLAT and IVF_FLAT, embedded in this process, filled
and searched through prodsearch's Milvus store) when pymilvus is (`pip install '.[milvus]'`).

    python benchmarks/search_scale.py                       # 100k and 1M vectors, d = 512
    python benchmarks/search_scale.py --sizes 100000 --dim 1280
    python benchmarks/search_scale.py --sizes 12400000 --singles 200   # Cdiscount scale, ~1 h
    python benchmarks/search_scale.py --only prodsearch Flat Milvus     # FAISS beside Milvus Lite

Sizes whose float32 vectors do not fit in ``--in-memory-gb`` are generated once as float16 on disk
(``--work``) and streamed: exact search runs over float16 chunks (the ground truth and the exact
row), the index is built as prodsearch builds it (trained on a sample, added in chunks), and graph
libraries are skipped with the reason. Peak resident memory is printed after each size.
"""

from __future__ import annotations

import argparse
import logging
import platform
import shutil
import threading
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import faiss
import numpy as np

from prodsearch.eval.metrics import recall_against_exact
from prodsearch.eval.report import markdown_table
from prodsearch.indexer.index_types import choose_index_type, nlist_for, set_search_params, train_index
from prodsearch.indexer.vectors import add_vectors, create_vector_index, search

Search = Callable[[np.ndarray, int], np.ndarray]  # queries, k -> ids


def clustered_chunks(n: int, dim: int, seed: int, chunk: int = 200_000) -> Iterator[np.ndarray]:
    """n vectors in n/10 clusters under n/1000 super-clusters, normalised, ``chunk`` rows at a time."""
    rng = np.random.default_rng(seed)
    supers = rng.normal(size=(max(1, n // 1000), dim)).astype(np.float32)
    clusters = max(1, n // 10)
    centres = supers[rng.integers(0, len(supers), clusters)] + 0.5 * rng.normal(size=(clusters, dim)).astype(np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = centres[rng.integers(0, len(centres), m)] + 0.35 * rng.normal(size=(m, dim)).astype(np.float32)
        yield x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    out = np.empty((n, dim), dtype=np.float32)
    start = 0
    for x in clustered_chunks(n, dim, seed):
        out[start:start + len(x)] = x
        start += len(x)
    return out


def clustered_on_disk(n: int, dim: int, seed: int, folder: Path) -> np.ndarray:
    """The same vectors as float16 in a file under ``folder`` (generated once, then reused): 12.4M
    x 512 float32 would be 25 GB, more than this machine has."""
    path = folder / f"clustered-{n}x{dim}-seed{seed}.f16"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, dim))
        start = 0
        for x in clustered_chunks(n, dim, seed):
            out[start:start + len(x)] = x
            start += len(x)
        out.flush()
        del out
        tmp.rename(path)
    return np.load(path, mmap_mode="r")


def exact_chunked(base: np.ndarray, queries: np.ndarray, k: int, chunk: int = 250_000) -> np.ndarray:
    """Exact top-k ids over ``base`` (float16 on disk), one float32 chunk in memory at a time."""
    best_sims = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_ids = np.full((len(queries), k), -1, dtype=np.int64)
    for start in range(0, len(base), chunk):
        sims, ids = faiss.knn(queries, np.ascontiguousarray(base[start:start + chunk], dtype=np.float32), k,
                              metric=faiss.METRIC_INNER_PRODUCT)
        sims = np.concatenate([best_sims, sims], axis=1)
        ids = np.concatenate([best_ids, ids + start], axis=1)
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        best_sims, best_ids = np.take_along_axis(sims, order, axis=1), np.take_along_axis(ids, order, axis=1)
    return best_ids


class PeakMemory:
    """Peak anonymous resident memory, sampled every 0.2 s inside ``with PEAK:`` blocks only (builds
    and data generation: a sampling thread would disturb the timed searches). Anonymous memory is
    what the process needs; ru_maxrss would also count the page cache of the float16 file it streams."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self):
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self.current())

    @staticmethod
    def current() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))


PEAK = PeakMemory()


def queries_like(base: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    """Queries near catalog vectors (noise of norm about 0.3), like new photos of known products."""
    noise = rng.normal(size=(n, base.shape[1])).astype(np.float32) * (0.3 / np.sqrt(base.shape[1]))
    q = base[rng.integers(0, len(base), n)] + noise
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def measure(name: str, build: Callable[[], tuple[Search, int]], queries: np.ndarray, truth: np.ndarray,
            singles: int) -> dict:
    start = time.perf_counter()
    with PEAK:
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
    row = {"method": name, "build s": built, "B/vec": nbytes, "R@1": recall_against_exact(found, truth, 1),
           "R@10": recall_against_exact(found, truth, 10), "batch QPS": batch_qps}
    if times:
        ms = sorted(1000 * t for t in times)
        row |= {"single QPS": 1000 / statistics.mean(ms), "p50 ms": statistics.median(ms),
                "p99 ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))]}
    return row


def faiss_method(base: np.ndarray, spec: str, folder: Path, chunk: int = 500_000) -> Callable[[], tuple[Search, int]]:
    """Built as prodsearch builds it: trained on a sample, vectors added ``chunk`` rows at a time
    (``base`` may be float16 on disk); bytes per vector = the size of the written index file."""
    def build():
        index = create_vector_index(base.shape[1], len(base), spec)
        train_index(index, base)
        for start in range(0, len(base), chunk):
            add_vectors(index, base[start:start + chunk], np.arange(start, min(start + chunk, len(base))))
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "index.faiss"
        faiss.write_index(index, str(path))
        nbytes = path.stat().st_size // len(base)
        path.unlink()
        build.index, build.result = index, ((lambda q, k: search(index, q, k)[1]), nbytes)
        return build.result
    return build


def numpy_method(base: np.ndarray) -> Callable[[], tuple[Search, int]]:
    def run(q, k):
        sims = q @ base.T
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        return np.take_along_axis(top, np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1), axis=1)
    return lambda: (run, base.shape[1] * 4)


def milvus_method(base: np.ndarray, kind: str, folder: Path, chunk: int = 100_000):
    """A Milvus Lite collection (embedded, in this process) as ``index --vector-store milvus`` fills
    it: upserted through pymilvus in prodsearch's batches; bytes per vector = the Lite folder's size."""
    from prodsearch.indexer.milvus import MilvusSearch, MilvusStore
    from prodsearch.indexer.milvus_types import milvus_index_spec, parse_spec
    from prodsearch.indexer.vector_store import MilvusTarget

    def build():
        lite = folder / "milvus-bench.db"
        shutil.rmtree(lite, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        store = MilvusStore.open(MilvusTarget(str(lite.resolve()), "bench"), folder, base.shape[1])
        spec = milvus_index_spec(kind, len(base), base.shape[1], lite=True)
        store.create(spec)
        for start in range(0, len(base), chunk):
            rows = np.asarray(base[start:start + chunk], dtype=np.float32)
            store.upsert(np.arange(start, start + len(rows)), rows, ["s"] * len(rows), [""] * len(rows))
        store.flush()
        searcher = MilvusSearch(store, parse_spec(spec)[0])
        nbytes = sum(f.stat().st_size for f in lite.rglob("*") if f.is_file()) // len(base)
        build.close = store.close
        return (lambda q, k: searcher.search(q, k)[1]), nbytes
    return build


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


def run_size(n: int, dim: int, n_queries: int, singles: int, folder: Path, in_memory: float,
             nprobes: list[int], only: list[str] = ()) -> list[dict]:
    on_disk = n * dim * 4 > in_memory
    with PEAK:
        base = clustered_on_disk(n, dim, n, folder) if on_disk else clustered(n, dim, seed=n)
        queries = queries_like(base, n_queries, seed=1)
    chosen = choose_index_type(n, dim)
    methods: list[tuple[str, Callable]] = [(f"prodsearch auto ({chosen})", faiss_method(base, "auto", folder))]
    if on_disk:
        start = time.perf_counter()
        truth = exact_chunked(base, queries, 10)
        seconds = time.perf_counter() - start
        exact_row = {"method": "exact, float16 chunks (faiss.knn)", "build s": 0.0, "B/vec": dim * 2, "R@1": 1.0,
                     "R@10": 1.0, "batch QPS": n_queries / seconds}
        logging.warning("%d vectors: FAISS Flat and numpy need %.1f GB as float32 (no room); exact search runs "
                        "over float16 chunks instead", n, n * dim * 4 / 1e9)
        for name, per_vector in (("hnswlib", 4 * dim + 8 * 32 + 16), ("usearch f16", 2 * dim + 8 * 32 + 16)):
            logging.warning("%s: not run at %d vectors: about %.0f GB of index and %.1f h to build (graph build "
                            "scales n log n from 1M)", name, n, n * per_vector / 1e9, n / 1e6 * 1.2 * 600 / 3600)
    else:
        exact = create_vector_index(dim, 0, "Flat")
        add_vectors(exact, base, np.arange(n))
        truth = search(exact, queries, 10)[1]
        del exact
        methods.append(("faiss Flat (exact)", faiss_method(base, "Flat", folder)))
        if n * dim * 4 < 8e9:
            methods.append(("numpy brute force", numpy_method(base)))
        for name, make in (("hnswlib M32 efC200 ef128", hnswlib_method), ("usearch f16 M32 ef128", usearch_method)):
            try:
                methods.append((name, make(base)))
            except ImportError:
                logging.warning("%s is not installed (pip install '.[bench]'): skipped", name.split()[0])
        methods += [("Milvus Lite FLAT", milvus_method(base, "FLAT", folder)),
                    (f"Milvus Lite IVF_FLAT nlist {nlist_for(n)} nprobe 16", milvus_method(base, "IVF_FLAT", folder))]
    rows = [{"vectors": n, **exact_row}] if on_disk else []
    for name, build in methods:
        if only and not any(word in name for word in only):
            continue
        row = measure(name, build, queries, truth, singles)
        rows.append({"vectors": n, **row})
        print(markdown_table([rows[-1]]).splitlines()[-1], flush=True)
        if name.startswith("Milvus"):
            build.close()
        if name.startswith("prodsearch") and faiss.try_extract_index_ivf(build.index.index) is not None:
            for nprobe in nprobes:  # the same index searched with other nprobe values
                set_search_params(build.index, nprobe=nprobe)
                row = measure(f"  same, nprobe {nprobe}", lambda: build.result, queries, truth, singles)
                rows.append({"vectors": n, **row, "build s": rows[-1]["build s"]})
                print(markdown_table([rows[-1]]).splitlines()[-1], flush=True)
            set_search_params(build.index)
            del build.index, build.result
    print(f"{n} vectors: peak anonymous resident memory of this process so far {PEAK.peak / 1e9:.1f} GB", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--singles", type=int, default=200, help="queries timed one at a time")
    parser.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "out" / "search-scale",
                        help="where vectors too large for memory are kept as float16 (12.4M x 512: 12.7 GB)")
    parser.add_argument("--nprobe", type=int, nargs="*", default=[8, 32],
                        help="other nprobe values to search prodsearch's IVF index with (default one: 16)")
    parser.add_argument("--only", nargs="*", default=[],
                        help="measure only the methods whose name holds one of these words (prodsearch, Flat, Milvus)")
    parser.add_argument("--in-memory-gb", type=float, default=8.0,
                        help="sizes whose float32 vectors exceed this are generated on disk as float16")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"{platform.machine()}, faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, d = {args.dim}")
    rows = []
    for n in args.sizes:
        rows += run_size(n, args.dim, args.queries, args.singles, args.work, args.in_memory_gb * 1e9, args.nprobe,
                         args.only)
    print()
    print(markdown_table(rows, list(dict.fromkeys(k for row in rows for k in row))))


if __name__ == "__main__":
    main()
