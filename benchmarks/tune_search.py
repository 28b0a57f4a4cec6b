"""Search parameters tuned on real embeddings: how many inverted lists must a real photo probe?

Synthetic clustered vectors flatter IVF (a query sits next to its near-duplicate). Here the base is
the Grocery Store protocol B catalog (iconic + train photos) and the queries are the 2,485 test
photos, embedded by each model given; a real query's nearest catalog image is another photo of the
product, not a near-copy. For each index type and search parameter: recall@1 / recall@10 against
exact search and SKU top-1 (the answer a user sees), so the cost of approximation is in the unit
that matters. Embeddings are cached under ``--out``.

    python benchmarks/tune_search.py
    python benchmarks/tune_search.py --model lite0 --model benchmarks/out/train-grocery-store/train-224/model.pt
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import logging
from pathlib import Path

import numpy as np

from prodsearch.eval.grocery_store import write_grocery_store_manifests
from prodsearch.eval.metrics import recall_against_exact
from prodsearch.eval.report import markdown_table
from prodsearch.indexer.index_types import set_search_params, train_index
from prodsearch.indexer.vectors import add_vectors, create_vector_index, search
from prodsearch.retrieval.encoders import create_encoder
from prodsearch.retrieval.embedding import embed_files

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATASET = ROOT.parent / "shared" / "datasets" / "grocery-store"
SWEEPS = {"IVF{nlist},Flat": ("nprobe", (1, 2, 4, 8, 16, 32)),
          "HNSW32,Flat": ("efSearch", (16, 32, 64, 128))}


def read_manifest(path: Path) -> tuple[list[Path], np.ndarray]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [path.parent / r["image"] for r in rows], np.array([r["sku"] for r in rows])


def embedded(model: str, paths: list[Path], cache: Path) -> np.ndarray:
    """Embeddings of ``paths`` by ``model``, cached by model and file list."""
    key = hashlib.sha1((model + "\n".join(map(str, paths))).encode()).hexdigest()[:12]
    file = cache / f"{key}.npy"
    if not file.exists():
        result = embed_files(create_encoder(model), paths)
        if len(result.positions) != len(paths):
            raise SystemExit(f"{len(paths) - len(result.positions)} photos could not be read: {result.failures}")
        cache.mkdir(parents=True, exist_ok=True)
        np.save(file, result.vectors)
    return np.load(file)


def sweep(model: str, base: np.ndarray, base_skus: np.ndarray, queries: np.ndarray, query_skus: np.ndarray,
          nlists: list[int]) -> list[dict]:
    exact = create_vector_index(base.shape[1], 0, "Flat")
    add_vectors(exact, base, np.arange(len(base)))
    truth = search(exact, queries, 10)[1]
    rows = [_row(model, "Flat (exact)", "-", truth, truth, base_skus, query_skus)]
    specs = [s.format(nlist=n) for s in SWEEPS if "{nlist}" in s for n in nlists] + [s for s in SWEEPS if "{" not in s]
    for spec in specs:
        index = create_vector_index(base.shape[1], len(base), spec)
        train_index(index, base)
        add_vectors(index, base, np.arange(len(base)))
        name, values = SWEEPS["IVF{nlist},Flat" if spec.startswith("IVF") else spec]
        for value in values:
            set_search_params(index, **{name: value})
            found = search(index, queries, 10)[1]
            rows.append(_row(model, spec, f"{name} {value}", found, truth, base_skus, query_skus))
    return rows


def _row(model, spec, param, found, truth, base_skus, query_skus) -> dict:
    return {"model": model, "index": spec, "param": param,
            "R@1": recall_against_exact(found, truth, 1), "R@10": recall_against_exact(found, truth, 10),
            "SKU top-1": float(np.mean(base_skus[found[:, 0]] == query_skus))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "tune-search")
    parser.add_argument("--model", action="append", help="embedder name or checkpoint (repeatable) [lite0]")
    parser.add_argument("--nlist", type=int, nargs="+", default=[16, 32, 64],
                        help="inverted lists (the catalog has 2,721 vectors: 170, 85, 43 per list)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    manifests = write_grocery_store_manifests(args.dataset, args.out / "manifests")
    base_paths, base_skus = read_manifest(manifests.catalog_b)
    query_paths, query_skus = read_manifest(manifests.test)
    rows = []
    for model in args.model or ["tf_efficientnet_lite0"]:
        base = embedded(model, base_paths, args.out / "cache")
        queries = embedded(model, query_paths, args.out / "cache")
        label = model if len(model) < 40 else '.../' + '/'.join(Path(model).parts[-2:])
        rows += sweep(label, base, base_skus, queries, query_skus, args.nlist)
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
