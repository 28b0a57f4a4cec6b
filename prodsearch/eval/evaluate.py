"""Top-k SKU accuracy of labelled customer photos against an index."""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Sequence

from prodsearch.eval.categories import CategoryAccuracy, LevelAccuracy, level_accuracy, per_category_accuracy
from prodsearch.eval.metrics import hits_at_k, top_k_accuracy
from prodsearch.indexer.product_index import ProductIndex
from prodsearch.catalog.listing import Item, Skipped, read_listing
from prodsearch.retrieval.embedding import FileEmbeddings, FilesDone

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueryOutcome:
    path: str
    truth: str
    ranked: list[str]  # SKUs, best first
    score: float  # similarity of the first SKU
    truth_category: str | None = None  # the query's own, else its SKU's in the catalog
    predicted_category: str | None = None  # the first SKU's


@dataclass(frozen=True)
class ProductAccuracy:
    """Queries grouped by the manifest's ``product`` column, each group answered as one."""

    n: int  # products
    photos: int  # photos in them
    top1: float
    top5: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class EvalReport:
    n: int
    top1: float
    top5: float
    skipped: list[Skipped] = field(default_factory=list)
    unknown_sku: int = 0  # queries whose true SKU is not in the catalog (they count as misses)
    seconds: float = 0.0
    outcomes: list[QueryOutcome] = field(default_factory=list)
    levels: list[LevelAccuracy] = field(default_factory=list)  # top-1 at each level of the category tree
    categories: list[CategoryAccuracy] = field(default_factory=list)  # per true category, worst first
    products: ProductAccuracy | None = None  # when the queries name their product

    @property
    def images_per_second(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "n": self.n,
            "top1": self.top1,
            "top5": self.top5,
            "skipped": [s.to_dict() for s in self.skipped],
            "unknown_sku": self.unknown_sku,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
            "levels": [lv.to_dict() for lv in self.levels],
            "categories": [c.to_dict() for c in self.categories],
            "products": self.products.to_dict() if self.products else None,
        }


def evaluate(
    queries: str | os.PathLike,
    index: ProductIndex,
    *,
    batch_size: int | None = None,
    num_workers: int | None = None,
    progress: FilesDone | None = None,
) -> EvalReport:
    """Embed every labelled query photo with the index's encoder, rank SKUs, and score top-1 / top-5."""
    listing = read_listing(queries)
    items = listing.items
    embedded = index.embed([it.path for it in items], batch_size=batch_size, num_workers=num_workers,
                           progress=progress)
    report = score_embedded(items, embedded, index)
    report.skipped[:0] = listing.skipped
    return report


def score_embedded(items: Sequence[Item], embedded: FileEmbeddings, index: ProductIndex) -> EvalReport:
    """Score already-embedded query photos against ``index`` (one embedding pass can serve several
    indexes built with the same model)."""
    matches = index.search(embedded.vectors, top_k=5)
    catalog = index.products({items[p].sku for p in embedded.positions.tolist()})
    outcomes = []
    for p, row in zip(embedded.positions.tolist(), matches):
        item = items[p]
        truth_category = item.category or (catalog[item.sku].category if item.sku in catalog else None)
        outcomes.append(QueryOutcome(str(item.path), item.sku, [m.sku for m in row], row[0].score if row else 0.0,
                                     truth_category, row[0].category if row else None))
    skipped = [Skipped(str(items[p].path), r) for p, r in sorted(embedded.failures.items())]
    known = set(index.skus)
    unknown = sum(o.truth not in known for o in outcomes)
    if unknown:
        log.warning("%d query photos belong to SKUs that are not in the index; they count as misses", unknown)
    ranked, truth = [o.ranked for o in outcomes], [o.truth for o in outcomes]
    truth_categories = [o.truth_category for o in outcomes]
    return EvalReport(
        n=len(outcomes),
        top1=top_k_accuracy(ranked, truth, 1),
        top5=top_k_accuracy(ranked, truth, 5),
        skipped=skipped,
        unknown_sku=unknown,
        seconds=embedded.seconds,
        outcomes=outcomes,
        levels=level_accuracy(truth_categories, [o.predicted_category for o in outcomes]),
        categories=per_category_accuracy(truth_categories, hits_at_k(ranked, truth, 1)),
        products=score_products(items, embedded, index),
    )


def score_products(items: Sequence[Item], embedded: FileEmbeddings, index: ProductIndex) -> ProductAccuracy | None:
    """Per-product accuracy: the photos that share a ``product`` id are fused into one answer
    (:meth:`ProductIndex.search_as_one`); ``None`` when no query names a product."""
    groups: dict[str, list[int]] = defaultdict(list)  # product -> rows of embedded.vectors
    for row, p in enumerate(embedded.positions.tolist()):
        if items[p].product:
            groups[items[p].product].append(row)
    if not groups:
        return None
    ranked, truth = [], []
    for product, rows in groups.items():
        skus = {items[embedded.positions[r]].sku for r in rows}
        if len(skus) > 1:
            log.warning("product %s has photos labelled with %d SKUs (%s); scored against the first",
                        product, len(skus), ", ".join(sorted(skus)))
        truth.append(items[embedded.positions[rows[0]]].sku)
        ranked.append([m.sku for m in index.search_as_one(embedded.vectors[rows], top_k=5)])
    return ProductAccuracy(len(groups), sum(len(r) for r in groups.values()),
                           top_k_accuracy(ranked, truth, 1), top_k_accuracy(ranked, truth, 5))
