"""``prodsearch demo``: the whole job on a synthetic shop, on a fresh machine with no data.

A generated catalog of packaged goods (with look-alike variants) is indexed with the ImageNet
embedder, generated customer snapshots are evaluated against it, and one snapshot's ranked answer is
shown. Then the embedder is trained on the catalog photos plus other snapshots of the same products
(never the evaluation ones), and the catalog is indexed, evaluated and queried again with the
trained model, so that the two can be compared on the same snapshots.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from prodsearch.eval.evaluate import EvalReport, evaluate
from prodsearch.indexer.build import BuildReport, build_index
from prodsearch.indexer.product_index import ProductIndex, QueryResult
from prodsearch.retrieval.embedding import FilesDone
from prodsearch.retrieval.training import TrainConfig, TrainResult, train as train_embedder
from prodsearch.synthetic import SyntheticDataset, write_synthetic_dataset

log = logging.getLogger(__name__)

# Training snapshots per SKU and epochs over them, measured on the default shop with 10 evaluation
# snapshots per SKU (top-1 0.550 untrained; torch fp32): 3 snapshots 0.721, 6: 0.775, 10: 0.767;
# 6 snapshots for 15, 20, 25, 40 epochs: 0.767, 0.775, 0.775, 0.752. More buys nothing, costs seconds.
TRAIN_SNAPSHOTS = 6
TRAIN_EPOCHS = 20


@dataclass
class ModelRun:
    """One embedder's part of the demo: its index, its evaluation, its answer to the example."""

    build: BuildReport
    evaluation: EvalReport
    example: QueryResult


@dataclass
class TrainedRun(ModelRun):
    """The trained embedder's part, with how it was trained."""

    training: TrainResult  # where the model is, and each epoch's loss
    config: TrainConfig
    train_images: int  # catalog photos plus training snapshots
    train_seconds: float  # feature caching included: the wait a user sees


@dataclass
class DemoReport:
    dataset: SyntheticDataset
    build: BuildReport  # the ImageNet embedder's index, evaluation and example answer
    evaluation: EvalReport
    example: QueryResult
    example_truth: str
    seconds: float
    trained: TrainedRun | None = None  # None when training was skipped


def _example_query(dataset: SyntheticDataset) -> tuple[Path, str]:
    """The first snapshot of a product that has look-alikes: the hard case worth showing."""
    families = [p.family for p in dataset.products]
    spec = next((p for p in dataset.products if families.count(p.family) > 1), dataset.products[0])
    return next(p for p in sorted((dataset.queries_dir / spec.sku).iterdir())), spec.sku


def demo_train_config(dataset: SyntheticDataset, out: Path, *, epochs: int = TRAIN_EPOCHS, seed: int = 0,
                      device: str = "auto") -> TrainConfig:
    """Heads only, on backbone features cached once: the recipe that trains in seconds on a CPU
    (the backbone's ImageNet features already tell product lines apart; the head learns which of
    them tell look-alike variants apart). The training snapshots are the augmentation: rendered by
    the snapshot generator itself, they teach the invariances better per second than cached
    ``--augment customer`` views (``--views 2`` on top of 6 snapshots: 0.765 against 0.775, at
    twice the feature-caching time)."""
    skus = len(dataset.products)
    return TrainConfig(train=str(dataset.train_csv), out=str(out), freeze_backbone=True, epochs=epochs,
                       lr_steps=(), accumulate=1, batch_size=min(32, 4 * skus),  # batch <= 4 photos x SKUs
                       seed=seed, device=device)


def _index_and_ask(dataset: SyntheticDataset, index_dir: Path, model: str | None, photo: Path,
                   options: dict[str, str], progress: FilesDone | None) -> ModelRun:
    """Index the catalog with ``model`` (None: the default ImageNet embedder), evaluate every
    evaluation snapshot and answer the example query."""
    build = build_index(dataset.catalog_csv, index_dir, model=model, progress=progress, **options)
    index = ProductIndex.open(index_dir, **options)
    evaluation = evaluate(dataset.queries_csv, index, progress=progress)
    [example] = index.query([photo], top_k=5)
    log.info("%s: top-1 %.3f, top-5 %.3f on %d snapshots", index_dir, evaluation.top1, evaluation.top5, evaluation.n)
    return ModelRun(build, evaluation, example)


def _train(config: TrainConfig, progress: FilesDone | None) -> tuple[TrainResult, float]:
    """Train; return the result and the seconds it took. Progress is one bar over every step of
    every epoch."""
    def steps_done(event: dict) -> None:
        if progress is not None:
            progress((event["epoch"] - 1) * event["steps"] + event["step"], config.epochs * event["steps"])

    start = time.perf_counter()
    result = train_embedder(config, progress=steps_done)
    return result, time.perf_counter() - start


def run_demo(
    directory: str | os.PathLike,
    *,
    n_skus: int = 48,
    snapshots_per_sku: int = 3,
    seed: int = 0,
    train: bool = True,
    train_snapshots_per_sku: int = TRAIN_SNAPSHOTS,
    epochs: int = TRAIN_EPOCHS,
    runtime: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    progress: FilesDone | None = None,
) -> DemoReport:
    """Generate the synthetic shop in ``directory``, index it, evaluate it and answer one query with
    the ImageNet embedder; then (``train``) train the embedder on separate snapshots and do the same
    with it, in ``directory``/index-trained (the model: ``directory``/model/model.pt)."""
    if train and train_snapshots_per_sku < 1:
        raise ValueError("training needs at least one training snapshot per SKU")
    start = time.perf_counter()
    directory = Path(directory)
    dataset = write_synthetic_dataset(directory / "data", n_skus=n_skus, snapshots_per_sku=snapshots_per_sku,
                                      seed=seed, train_snapshots_per_sku=train_snapshots_per_sku if train else 0)
    options = {"runtime": runtime, "device": device, "precision": precision}
    photo, truth = _example_query(dataset)
    before = _index_and_ask(dataset, directory / "index", None, photo, options, progress)
    trained = None
    if train:
        config = demo_train_config(dataset, directory / "model", epochs=epochs, seed=seed, device=device)
        log.info("training the embedding head on %s for %d epochs", dataset.train_csv, epochs)
        result, seconds = _train(config, progress)
        log.info("trained %s in %.1fs", result.model_path, seconds)
        after = _index_and_ask(dataset, directory / "index-trained", str(result.model_path), photo, options,
                               progress)
        images = len(dataset.products) * (1 + train_snapshots_per_sku)
        trained = TrainedRun(after.build, after.evaluation, after.example, result, config, images, seconds)
    return DemoReport(dataset, before.build, before.evaluation, before.example, truth,
                      time.perf_counter() - start, trained)
