"""Accuracy at every level of the category tree, and per category.

A prediction of the wrong SKU in the right category still counts at the category levels it gets
right: for a true ``Fruit/Apple/Granny-Smith``, ``Fruit/Apple/Pink-Lady`` is right at levels 1 and
2; ``Fruit/Pear/Conference`` at level 1 only.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Sequence


@dataclass(frozen=True)
class LevelAccuracy:
    level: int  # 1 = the top of the tree
    n: int  # queries whose true category is at least this deep
    top1: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CategoryAccuracy:
    category: str
    n: int
    top1: float  # SKU top-1 of the queries of this category

    def to_dict(self) -> dict:
        return asdict(self)


def _levels(category: str | None) -> list[str]:
    return [part for part in (category or "").split("/") if part]


def level_accuracy(truth: Sequence[str | None], predicted: Sequence[str | None]) -> list[LevelAccuracy]:
    """Top-1 category accuracy at each depth: the predicted product's category path must agree
    with the true one down to that level. Queries without a category are left out."""
    if len(truth) != len(predicted):
        raise ValueError(f"{len(predicted)} predictions for {len(truth)} true categories")
    true_levels = [_levels(t) for t in truth]
    pred_levels = [_levels(p) for p in predicted]
    depth = max((len(t) for t in true_levels), default=0)
    out = []
    for level in range(1, depth + 1):
        pairs = [(t[:level], p[:level]) for t, p in zip(true_levels, pred_levels) if len(t) >= level]
        out.append(LevelAccuracy(level, len(pairs), sum(t == p for t, p in pairs) / len(pairs)))
    return out


def per_category_accuracy(truth: Sequence[str | None], hits: Sequence[bool]) -> list[CategoryAccuracy]:
    """SKU top-1 per true category, worst first (ties: the larger category first)."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for category, hit in zip(truth, hits):
        if category:
            groups[category].append(bool(hit))
    rows = [CategoryAccuracy(c, len(h), sum(h) / len(h)) for c, h in groups.items()]
    return sorted(rows, key=lambda r: (r.top1, -r.n, r.category))
