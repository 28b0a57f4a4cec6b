"""``prodsearch demo``: the whole job on a synthetic shop, on a fresh machine with no data.

A generated catalog of packaged goods (with look-alike variants) is indexed, generated customer
snapshots are evaluated against it, and one snapshot's ranked answer is shown.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from prodsearch.eval.evaluate import EvalReport, evaluate
from prodsearch.indexer.build import BuildReport, build_index
from prodsearch.indexer.product_index import ProductIndex, QueryResult
from prodsearch.retrieval.embedding import FilesDone
from prodsearch.synthetic import SyntheticDataset, write_synthetic_dataset


@dataclass
class DemoReport:
    dataset: SyntheticDataset
    build: BuildReport
    evaluation: EvalReport
    example: QueryResult
    example_truth: str
    seconds: float


def _example_query(dataset: SyntheticDataset) -> tuple[Path, str]:
    """The first snapshot of a product that has look-alikes: the hard case worth showing."""
    families = [p.family for p in dataset.products]
    spec = next((p for p in dataset.products if families.count(p.family) > 1), dataset.products[0])
    return next(p for p in sorted((dataset.queries_dir / spec.sku).iterdir())), spec.sku


def run_demo(
    directory: str | os.PathLike,
    *,
    n_skus: int = 48,
    snapshots_per_sku: int = 3,
    seed: int = 0,
    runtime: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    progress: FilesDone | None = None,
) -> DemoReport:
    """Generate the synthetic shop in ``directory``, index it, evaluate it, answer one query."""
    start = time.perf_counter()
    directory = Path(directory)
    dataset = write_synthetic_dataset(directory / "data", n_skus=n_skus, snapshots_per_sku=snapshots_per_sku, seed=seed)
    options = {"runtime": runtime, "device": device, "precision": precision}
    build = build_index(dataset.catalog_csv, directory / "index", progress=progress, **options)
    index = ProductIndex.open(directory / "index", **options)
    evaluation = evaluate(dataset.queries_csv, index, progress=progress)
    photo, truth = _example_query(dataset)
    [example] = index.query([photo], top_k=5)
    return DemoReport(dataset, build, evaluation, example, truth, time.perf_counter() - start)
