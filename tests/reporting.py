"""An :class:`EvalReport` made by hand from photos drawn on the fly, for the HTML report's tests (no
model): right and wrong answers, one dominant confusion, photos of products not in the catalog, a
SKU that is an HTML tag, and photos that cannot be read."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conftest import product_image, snapshot
from prodsearch.eval.categories import level_accuracy, per_category_accuracy
from prodsearch.eval.evaluate import EvalReport, ProductAccuracy, QueryOutcome, open_set_report
from prodsearch.eval.metrics import hits_at_k, top_k_accuracy
from prodsearch.indexer.rejection import RejectRule
from prodsearch.indexer.results import Match

SCRIPT_SKU = "<script>alert('sku')</script>"
DOMINANT = ("sku-01", "sku-02")  # every photo of sku-01 is answered sku-02
BROKEN_QUERY = 0  # outcome 0's photo is a text file (and its answer the worst of all)
BROKEN_CATALOG_SKU = "sku-04"  # its catalog photo is a text file
RULE = RejectRule("score", 0.5)


def sku_name(i: int) -> str:
    return SCRIPT_SKU if i == 3 else f"sku-{i:02d}"


def build_report(root: Path, n_known: int = 120, n_unknown: int = 16, n_skus: int = 12, seed: int = 0,
                 variants: int = 3) -> EvalReport:
    """``n_known`` labelled photos (``variants`` distinct photos per SKU) and ``n_unknown`` photos of
    products not in the catalog, answered with made-up scores by :data:`RULE`."""
    rng = np.random.default_rng(seed)
    (root / "catalog").mkdir(parents=True, exist_ok=True)
    (root / "queries").mkdir(exist_ok=True)
    broken = root / "broken.jpg"
    broken.write_text("not a photo\n")
    skus = [sku_name(i) for i in range(n_skus)]
    category = {sku: f"Aisle {i % 4}/Shelf {i}" for i, sku in enumerate(skus)}
    photos = {}
    for i, sku in enumerate(skus):
        path = root / "catalog" / f"{i}.jpg"
        product_image(1000 * i, size=200).save(path, quality=90)
        photos[sku] = broken if sku == BROKEN_CATALOG_SKU else path

    def match(sku: str, score: float) -> Match:
        i = skus.index(sku) if sku in skus else 0
        return Match(sku, float(score), f"Product <b>{i}</b> & co", category.get(sku), i + 1, str(photos[sku]))

    def answer(first: str, truth: str | None, truth_rank: int | None, s1: float) -> list[Match]:
        others = [s for s in skus if s not in (first, truth)]
        ranked = [first, *rng.choice(others, 4, replace=False).tolist()]
        if truth_rank is not None and 1 < truth_rank <= len(ranked):
            ranked[truth_rank - 1] = truth
        scores = s1 - np.cumsum(rng.uniform(0.01, 0.08, 5)) + 0.01
        scores[0] = s1
        return [match(s, v) for s, v in zip(ranked, scores)]

    outcomes = []
    for k in range(n_known):
        truth = skus[k % n_skus]
        path = root / "queries" / f"{k % n_skus}-{k // n_skus % variants}.jpg"
        if not path.exists():
            snapshot(product_image(1000 * (k % n_skus), size=200), seed=k).save(path, quality=85)
        if k == BROKEN_QUERY:
            path, matches = broken, answer(skus[(k + 5) % n_skus], truth, None, 0.99)
        elif truth == DOMINANT[0]:
            matches = answer(DOMINANT[1], truth, int(rng.integers(2, 6)), rng.uniform(0.45, 0.8))
        elif rng.random() < 0.7:
            matches = answer(truth, truth, 1, rng.uniform(0.42, 0.95))
        else:
            wrong = str(rng.choice([s for s in skus if s not in (truth, DOMINANT[1])]))
            matches = answer(wrong, truth, int(rng.choice([2, 3, 4, 5, 6])) if rng.random() < 0.6 else None,
                             rng.uniform(0.35, 0.8))
        outcomes.append(outcome(path, truth, matches, category[truth]))
    unknown = []
    for j in range(n_unknown):
        path = root / "queries" / f"new-{j}.jpg"
        snapshot(product_image(90000 + j, size=200), seed=j).save(path, quality=85)
        matches = answer(str(rng.choice(skus)), None, None, rng.uniform(0.3, 0.7))
        unknown.append(outcome(path, f"new-{j}", matches, None))
    ranked, truth = [o.ranked for o in outcomes], [o.truth for o in outcomes]
    return EvalReport(
        n=len(outcomes), top1=top_k_accuracy(ranked, truth, 1), top5=top_k_accuracy(ranked, truth, 5),
        seconds=2.0, outcomes=outcomes,
        levels=level_accuracy([o.truth_category for o in outcomes], [o.predicted_category for o in outcomes]),
        categories=per_category_accuracy([o.truth_category for o in outcomes], hits_at_k(ranked, truth, 1)),
        products=ProductAccuracy(len(outcomes) // 2, len(outcomes), 0.75, 0.9),
        open_set=open_set_report(outcomes, unknown, RULE), unknown_outcomes=unknown)


def outcome(path: Path, truth: str, matches: list[Match], truth_category: str | None) -> QueryOutcome:
    return QueryOutcome(str(path), truth, [m.sku for m in matches], matches[0].score, truth_category,
                        matches[0].category, matches, RULE.decide([m.score for m in matches]))
