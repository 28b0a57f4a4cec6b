"""Top-k SKU accuracy of labelled customer photos against an index."""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Sequence

from prodsearch.eval.categories import CategoryAccuracy, LevelAccuracy, level_accuracy, per_category_accuracy
from prodsearch.eval.metrics import hits_at_k, top_k_accuracy
from prodsearch.eval.open_set import OpenSetScores, Rates, open_set_scores, rates_at
from prodsearch.indexer.ingest import nothing_readable
from prodsearch.indexer.product_index import ProductIndex
from prodsearch.indexer.rejection import RULES, STORED, Decision, RejectRule, Rejection, rule_values, top_two
from prodsearch.indexer.results import Match
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
    matches: list[Match] = field(default_factory=list)  # the ranked SKUs' details, best first
    decision: Decision | None = None  # the "not in catalog" rule's, when one was applied

    @property
    def correct(self) -> bool:
        return bool(self.ranked) and self.ranked[0] == self.truth

    def value(self, rule: str) -> float:
        """The rejection rule's value of this answer (higher: surer it is a catalog product)."""
        return float(rule_values(rule, *top_two([m.score for m in self.matches])))


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
class OpenSetReport:
    """Rejection of products that are not in the catalog: what the applied rule does to the known
    photos (and the unknown ones, when given), and the threshold-free metrics of every rule."""

    rule: str | None  # applied; None: no rule (then the metrics are those of ``score``)
    threshold: float | None
    known: int
    unknown: int
    at_threshold: Rates | None  # None without a rule
    scores: OpenSetScores | None  # of the applied rule (``score`` without one); None without unknown photos
    by_rule: dict[str, OpenSetScores] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"rule": self.rule, "threshold": self.threshold, "known": self.known, "unknown": self.unknown,
                "at_threshold": self.at_threshold.to_dict() if self.at_threshold else None,
                **(self.scores.to_dict() if self.scores else {"auroc": None, "dir_at_far": None, "open_auc": None}),
                "by_rule": {rule: s.to_dict() for rule, s in self.by_rule.items()}}


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
    open_set: OpenSetReport | None = None  # with a rejection rule or unknown photos
    unknown_outcomes: list[QueryOutcome] = field(default_factory=list)  # photos of products not in the catalog

    @property
    def images_per_second(self) -> float:
        """Photos embedded per second, the unknown ones included (one pass embeds both)."""
        return (self.n + len(self.unknown_outcomes)) / self.seconds if self.seconds > 0 else 0.0

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
            "open_set": self.open_set.to_dict() if self.open_set else None,
        }


def evaluate(
    queries: str | os.PathLike,
    index: ProductIndex,
    *,
    unknown: str | os.PathLike | None = None,
    rejection: Rejection = STORED,
    batch_size: int | None = None,
    num_workers: int | None = None,
    progress: FilesDone | None = None,
) -> EvalReport:
    """Embed every labelled query photo with the index's encoder, rank SKUs, and score top-1 / top-5;
    with the "not in catalog" rule (``rejection``, the stored one by default) and photos of
    products the catalog does not hold (``unknown``), score rejection too."""
    listing = read_listing(queries)
    items = listing.items
    rule = index.rule(rejection)
    others = read_listing(unknown) if unknown is not None else None
    paths = [it.path for it in items] + ([it.path for it in others.items] if others else [])
    embedded = index.embed(paths, batch_size=batch_size, num_workers=num_workers, progress=progress)
    known, strangers = embedded.split(len(items))
    if not len(known.positions):  # top-1 of no photo is no measurement: an error, not 0.0
        unread = [Skipped(str(items[p].path), r) for p, r in sorted(known.failures.items())]
        raise nothing_readable(queries, len(items), unread + listing.skipped)
    report = score_embedded(items, known, index, rule)
    report.skipped[:0] = listing.skipped
    if others is not None:
        report.unknown_outcomes = answer_unknown(others.items, strangers, index, rule, known=items)
        report.skipped += others.skipped + [Skipped(str(others.items[p].path), r) for p, r in sorted(strangers.failures.items())]
    if rule is not None or others is not None:
        report.open_set = open_set_report(report.outcomes, report.unknown_outcomes, rule)
    return report


def score_embedded(items: Sequence[Item], embedded: FileEmbeddings, index: ProductIndex,
                   rule: RejectRule | None = None) -> EvalReport:
    """Score already-embedded query photos against ``index`` (one embedding pass can serve several
    indexes built with the same model); ``rule`` decides on each answer."""
    matches = index.search(embedded.vectors, top_k=5)
    catalog = index.products({items[p].sku for p in embedded.positions.tolist()})
    outcomes = []
    for p, row in zip(embedded.positions.tolist(), matches):
        item = items[p]
        truth_category = item.category or (catalog[item.sku].category if item.sku in catalog else None)
        outcomes.append(outcome(item, row, rule, truth_category))
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


def outcome(item: Item, row: list[Match], rule: RejectRule | None, truth_category: str | None = None) -> QueryOutcome:
    return QueryOutcome(str(item.path), item.sku, [m.sku for m in row], row[0].score if row else 0.0,
                        truth_category, row[0].category if row else None, row,
                        rule.decide([m.score for m in row]) if rule is not None and row else None)


def answer_unknown(items: Sequence[Item], embedded: FileEmbeddings, index: ProductIndex,
                   rule: RejectRule | None, known: Sequence[Item] = ()) -> list[QueryOutcome]:
    """Answers to photos of products the catalog does not hold; one whose label is a SKU of the
    index, or that is also among the ``known`` photos, is a mistake in the set, and counted all the
    same (with a warning)."""
    rows = index.search(embedded.vectors, top_k=5)
    positions = embedded.positions.tolist()
    outcomes = [outcome(items[p], row, rule, items[p].category) for p, row in zip(positions, rows)]
    mistake = unknown_overlap([items[p] for p in positions], index, known)
    if mistake:
        log.warning("%s", mistake)
    return outcomes


def unknown_overlap(unknown: Sequence[Item], index: ProductIndex, known: Sequence[Item] = ()) -> str | None:
    """Why photos given as products the catalog does not hold may not be: their labels are SKUs of
    the index, or they are files of the known photos (the same set given twice); None when neither."""
    held = set(index.skus)
    clash = sorted({it.sku for it in unknown if it.sku in held})
    shared = sorted({str(it.path) for it in unknown} & {str(it.path) for it in known})
    said = []
    if clash:
        said.append(f"{len(clash)} SKUs of the unknown photos are in the index ({', '.join(clash[:5])})")
    if shared:
        said.append(f"{len(shared)} unknown photos are also among the known ones (e.g. {shared[0]})")
    if not said:
        return None
    return f"{' and '.join(said)}; they count as unknown all the same: give photos of products the shop does not sell"


def open_set_report(known: Sequence[QueryOutcome], unknown: Sequence[QueryOutcome],
                    rule: RejectRule | None) -> OpenSetReport:
    correct = [o.correct for o in known]
    by_rule = {}
    if unknown:
        by_rule = {r: open_set_scores([o.value(r) for o in known], correct, [o.value(r) for o in unknown])
                   for r in RULES}
    applied = rule.rule if rule is not None else "score"
    at = None
    if rule is not None:
        at = rates_at(rule.threshold, [o.value(rule.rule) for o in known], correct,
                      [o.value(rule.rule) for o in unknown])
    return OpenSetReport(rule.rule if rule else None, rule.threshold if rule else None, len(known), len(unknown), at,
                         by_rule.get(applied), by_rule)


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
