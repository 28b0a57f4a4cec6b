"""Calibrate the "not in catalog" rule by leaving SKUs out.

How does a product the shop does not sell score? Play it with products it does sell: split the
SKUs of the labelled photos into folds, and search each fold's photos with that fold's SKUs left
out of the search (an id filter, as ``query --category`` uses: nothing is re-indexed). Each photo
is then once an *unknown* product, scored against a catalog without it, and a *known* one, scored
against the whole catalog. Photos of SKUs the index does not hold at all are unknowns as they are.
Held-out whole SKUs, not held-out photos of known SKUs: an unknown product has no near-duplicate
in the catalog (Mendes Junior et al. 2017 tune their ratio the same way).

A left-out SKU stands for a product the *embedder* never saw only if the embedder was not trained
on it. A model trained on the shop's SKUs has learnt to push exactly those apart, so leaving them
out understates how close a new product comes: on Grocery Store, thresholds set for 5% false
accepts this way accepted 19% to 55% of products never trained on (BENCHMARKS.md). Photos of
products the shop does not sell (``unknown``) measure that directly; without them a trained
embedder gets a warning.

For each rule of :mod:`prodsearch.indexer.rejection`, the threshold is the lowest that accepts at
most the asked false-accept rate of the left-out photos *and* at most that rate of the photos of
other products (each group on its own, so a few hundred hard photos of real strangers are not
drowned by many easy left-out ones); the rule that then keeps the most known photos right wins
(ties: the simpler rule, in the order of ``RULES``).

A rule that rejects most of the shop's own photos (more than :data:`MAX_KNOWN_REJECTED`) says the
embedder does not tell this shop's products apart from strangers: stored, it would answer "not in
catalog" to most customers. ``prodsearch calibrate`` refuses to store one without ``--force``.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from prodsearch.catalog.listing import Skipped, read_listing
from prodsearch.choices import MAX_KNOWN_REJECTED  # a rule rejecting more of the known photos needs --force
from prodsearch.errors import ProdsearchError
from prodsearch.eval.evaluate import unknown_overlap
from prodsearch.eval.open_set import auroc, far_threshold, rates_at
from prodsearch.indexer.ingest import nothing_readable
from prodsearch.indexer.product_index import ProductIndex
from prodsearch.indexer.rejection import RULES, RejectRule, rule_values, top_two
from prodsearch.retrieval.embedding import FilesDone

log = logging.getLogger(__name__)

DEFAULT_FAR = 0.05
DEFAULT_FOLDS = 5
MIN_UNKNOWN = 20  # fewer unknown photos cannot measure a false-accept rate of a few percent


class CalibrationError(ProdsearchError):
    """The labelled photos cannot calibrate the index (too few SKUs or photos)."""


@dataclass(frozen=True)
class RuleCalibration:
    """One rule at the threshold that reaches the asked false-accept rate on the calibration photos."""

    rule: str
    threshold: float
    false_accept_rate: float  # reached on the unknown photos
    known_accuracy: float  # known photos accepted and right
    known_rejected: float
    auroc: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Calibration:
    far: float  # asked for
    folds: int
    photos: int
    skus: int  # SKUs of the photos that the index holds
    known: int  # photos scored as known
    unknown: int  # photos scored as unknown: left_out + others
    left_out: int  # photos of index SKUs, scored with their SKU left out
    others: int  # photos of products the index does not hold
    top1: float  # closed-set top-1 of the known photos
    rules: list[RuleCalibration]
    chosen: RuleCalibration
    generation: int  # the index generation calibrated
    skipped: list[Skipped] = field(default_factory=list)
    warning: str | None = None  # why the rates may not hold for new products

    @property
    def rejects_most(self) -> bool:
        """Whether the chosen rule rejects most of the shop's own photos (see :data:`MAX_KNOWN_REJECTED`)."""
        return self.chosen.known_rejected > MAX_KNOWN_REJECTED

    def too_strict(self) -> str:
        """What a rule that rejects most known photos means, and what to do instead."""
        c = self.chosen
        return (f"the calibrated rule ({c.rule} >= {c.threshold:.4f}) rejects {c.known_rejected:.0%} of the photos of "
                f"the shop's own products (known right {c.known_accuracy:.0%}): the embedder does not tell this shop's "
                "products from others well enough; train one on the shop's photos first (prodsearch train), or give "
                "--unknown photos of other products, not of the shop's")

    def reject_rule(self) -> RejectRule:
        """The chosen rule, with what was measured, as stored in the index."""
        c = self.chosen
        return RejectRule(c.rule, c.threshold, {
            "far": self.far, "false_accept_rate": c.false_accept_rate, "known_accuracy": c.known_accuracy,
            "top1": self.top1, "photos": self.photos, "skus": self.skus, "left_out": self.left_out,
            "others": self.others, "folds": self.folds, "generation": self.generation})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["skipped"] = [s.to_dict() for s in self.skipped]
        return d


def calibrate(queries: str | os.PathLike, index: ProductIndex, *, unknown: str | os.PathLike | None = None,
              far: float = DEFAULT_FAR, folds: int = DEFAULT_FOLDS, seed: int = 0, batch_size: int | None = None,
              num_workers: int | None = None, progress: FilesDone | None = None) -> Calibration:
    """Embed the labelled photos of ``queries`` (and the photos of products the shop does not sell,
    ``unknown``, whatever their labels) with the index's encoder and calibrate on them."""
    items = read_listing(queries)
    others = read_listing(unknown) if unknown is not None else None
    listed = items.items + (others.items if others else [])
    embedded = index.embed([it.path for it in listed], batch_size=batch_size, num_workers=num_workers,
                           progress=progress)
    n = len(items.items)
    unread = {p: Skipped(str(listed[p].path), r) for p, r in sorted(embedded.failures.items())}
    if not (embedded.positions < n).any():  # nothing to calibrate on: an error, not "too few SKUs"
        raise nothing_readable(queries, n, [s for p, s in unread.items() if p < n] + items.skipped)
    labels = [listed[p].sku if p < n else None for p in embedded.positions.tolist()]
    result = calibrate_embedded(labels, embedded.vectors, index, far=far, folds=folds, seed=seed)
    result.skipped = items.skipped + (others.skipped if others else []) + list(unread.values())
    warnings = []
    weights = index.manifest.model.weights
    if result.others == 0 and weights.startswith("checkpoint:"):
        warnings.append(f"the index's embedder is a trained model ({weights}); if it was trained on these SKUs, "
                        "leaving them out understates how products it never saw score, and more of those will be "
                        "accepted than asked: add photos of products the shop does not sell with --unknown")
    if others is not None:
        warnings.append(unknown_overlap(others.items, index, items.items))
    for warning in filter(None, warnings):
        log.warning("%s", warning)
    if result.rejects_most:  # not logged: the command line refuses with it, or prints it with the rule
        warnings.append(result.too_strict())
    result.warning = "; ".join(filter(None, warnings)) or None
    return result


def calibrate_embedded(skus: Sequence[str], vectors: np.ndarray, index: ProductIndex, *, far: float = DEFAULT_FAR,
                       folds: int = DEFAULT_FOLDS, seed: int = 0) -> Calibration:
    """Calibrate on embeddings already made (rows of ``vectors``, labelled with ``skus``; a label
    the index does not hold, or ``None``, marks a photo of a product the shop does not sell)."""
    if not 0 < far < 1:
        raise CalibrationError(f"--far is a rate between 0 and 1 (0.05 = 5% of unknown products accepted), not {far}")
    generation = index.generation
    held = set(index.skus)
    skus = np.asarray(skus, dtype=object)
    in_index = np.array([s is not None and s in held for s in skus], dtype=bool)
    playable = sorted(set(skus[in_index]))
    if len(playable) < 2 or len(playable) < folds:
        raise CalibrationError(
            f"calibration needs labelled photos of at least {max(2, folds)} SKUs of the index (one fold each); "
            f"these photos show {len(playable)}")
    known = index.search(vectors[in_index], top_k=2)
    known_s = _top_two(known)
    correct = np.array([bool(row) and row[0].sku == truth for row, truth in zip(known, skus[in_index])])
    others = _top_two(index.search(vectors[~in_index], top_k=2))
    left_out = []
    for fold in _folds(playable, folds, seed):
        rows = np.flatnonzero(in_index & np.isin(skus, fold))
        left_out.append(_top_two(index.search(vectors[rows], top_k=2, without_skus=fold)))
    groups = [g for g in (np.concatenate(left_out), others) if len(g)]
    unknown = sum(len(g) for g in groups)
    if unknown < MIN_UNKNOWN:
        raise CalibrationError(f"calibration needs at least {MIN_UNKNOWN} labelled photos to play unknown products; "
                               f"these give {unknown}")
    if index.generation != generation:
        log.warning("the index changed during calibration (generation %d to %d)", generation, index.generation)
    rules = [_calibrate_rule(rule, known_s, correct, groups, far) for rule in RULES]
    chosen = max(rules, key=lambda r: (r.known_accuracy, -RULES.index(r.rule)))
    return Calibration(far, folds, len(skus), len(playable), int(in_index.sum()), unknown, unknown - len(others),
                       len(others), float(correct.mean()) if correct.size else 0.0, rules, chosen, generation)


def _top_two(answers) -> np.ndarray:
    """(s1, s2) of each answer, as an (n, 2) array."""
    return np.array([top_two([m.score for m in row]) for row in answers], dtype=np.float64).reshape(-1, 2)


def _calibrate_rule(rule: str, known_s: np.ndarray, correct: np.ndarray, groups: list[np.ndarray],
                    far: float) -> RuleCalibration:
    """The rule at the strictest of the thresholds that hold each group of unknowns to ``far``."""
    known_v = rule_values(rule, known_s[:, 0], known_s[:, 1])
    values = [rule_values(rule, g[:, 0], g[:, 1]) for g in groups]
    threshold = max(far_threshold(v, far, known_v) for v in values)
    unknown_v = np.concatenate(values)
    rates = rates_at(threshold, known_v, correct, unknown_v)
    return RuleCalibration(rule, threshold, rates.false_accept_rate, rates.known_accuracy, rates.known_rejected,
                           auroc(known_v, unknown_v))


def _folds(skus: list[str], folds: int, seed: int) -> list[list[str]]:
    """SKUs shuffled (the same way for the same seed) and dealt into ``folds`` groups."""
    order = list(skus)
    random.Random(seed).shuffle(order)
    return [order[i::folds] for i in range(folds)]
