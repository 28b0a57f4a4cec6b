"""The "not in catalog" rule: its values, the open-set metrics against plain loops, leave-SKUs-out
calibration on a synthetic set whose answer is known, and how answers apply a stored rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import write_vectors_index
from prodsearch.eval.calibrate import CalibrationError, calibrate_embedded
from prodsearch.eval.open_set import (auroc, dir_at_far, dir_far_curve, far_threshold, open_auc, open_set_scores,
                                      rates_at)
from prodsearch.indexer.lifecycle import remove_from_index, set_rejection
from prodsearch.indexer.rejection import STORED, RejectRule, resolve, rule_values

# ------------------------------------------------------------------ rules


def test_rule_values_are_the_formulas():
    s1, s2 = 0.8, 0.5
    assert rule_values("score", s1, s2) == pytest.approx(0.8)
    assert rule_values("margin", s1, s2) == pytest.approx(0.3)
    assert rule_values("ratio", s1, s2) == pytest.approx(math.sqrt(2 - 2 * 0.5) / math.sqrt(2 - 2 * 0.8))
    assert np.isfinite(rule_values("ratio", 1.0, 0.2))  # an identical photo: d1 = 0 stays finite
    with pytest.raises(ValueError, match="unknown rejection rule"):
        rule_values("nope", s1, s2)


def test_decide_accepts_at_or_above_the_threshold():
    rule = RejectRule("margin", 0.1)
    assert RejectRule("margin", 0.25).decide([0.75, 0.5]).accepted is True  # exactly at the threshold
    assert rule.decide([0.9, 0.85]).accepted is False
    assert rule.decide([0.3]).value == pytest.approx(1.3)  # a single SKU compares with -1
    assert rule.decide([]).accepted is False


def test_resolve():
    stored = RejectRule("ratio", 1.2, {"far": 0.05})
    assert resolve(STORED, stored) is stored
    assert resolve(STORED, None) is None
    assert resolve(None, stored) is None
    assert resolve(1.5, stored) == RejectRule("ratio", 1.5)
    assert resolve(0.7, None) == RejectRule("score", 0.7)  # uncalibrated: the top-1 similarity
    assert RejectRule.from_dict(stored.to_dict()).calibration == {"far": 0.05}


# ------------------------------------------------------------------ metrics against plain loops

def plain_auroc(known, unknown):
    total = sum(1.0 if k > u else 0.5 if k == u else 0.0 for k in known for u in unknown)
    return total / (len(known) * len(unknown))


def plain_open_auc(known, correct, unknown):
    total = sum(1.0 if k > u else 0.5 if k == u else 0.0 for k, c in zip(known, correct) if c for u in unknown)
    return total / (len(known) * len(unknown))


def plain_dir_at_far(known, correct, unknown, far):
    """Try every threshold seen: the lowest whose false accepts stay within ``far``."""
    best = None
    for t in sorted(set(known) | set(unknown) | {math.inf}):
        if sum(u >= t for u in unknown) / len(unknown) <= far:
            best = t
            break
    return sum(c and k >= best for k, c in zip(known, correct)) / len(known)


@pytest.mark.parametrize("seed", range(5))
def test_metrics_equal_plain_loops(seed):
    rng = np.random.default_rng(seed)
    known = np.round(rng.normal(0.6, 0.15, 60), 2)  # rounded: ties between and within the sets
    unknown = np.round(rng.normal(0.4, 0.15, 45), 2)
    correct = rng.random(60) < 0.8
    assert auroc(known, unknown) == pytest.approx(plain_auroc(known, unknown))
    assert open_auc(known, correct, unknown) == pytest.approx(plain_open_auc(known, correct, unknown))
    for far in (0.0, 0.01, 0.05, 0.2):
        assert dir_at_far(known, correct, unknown, far) == pytest.approx(plain_dir_at_far(known, correct, unknown, far))
        threshold = far_threshold(unknown, far, known)
        assert np.mean(unknown >= threshold) <= far
    thresholds, fars, dirs = dir_far_curve(known, correct, unknown)
    for t, f, d in zip(thresholds, fars, dirs):
        assert f == pytest.approx(np.mean(unknown >= t))
        assert d == pytest.approx(np.mean(correct & (known >= t)))
    rates = rates_at(0.5, known, correct, unknown)
    assert rates.known_accuracy == pytest.approx(np.mean(correct & (known >= 0.5)))
    assert rates.known_rejected == pytest.approx(np.mean(known < 0.5))
    assert rates.false_accept_rate == pytest.approx(np.mean(unknown >= 0.5))


def test_metrics_edges():
    assert auroc([1.0, 2.0], [0.0]) == 1.0
    assert auroc([0.0], [1.0, 2.0]) == 0.0
    assert math.isnan(auroc([], [1.0]))
    assert open_auc([2.0, 2.0], [True, False], [1.0]) == 0.5  # a wrong answer never counts
    scores = open_set_scores([0.9, 0.8], [True, True], [0.1, 0.2])
    assert scores.auroc == 1.0 and scores.dir_at_far == {"0.01": 1.0, "0.05": 1.0}
    with pytest.raises(ValueError):
        far_threshold([0.1], 1.0)


# ------------------------------------------------------------------ calibration on a synthetic set

def synthetic_products(rng, n_skus, dim=32, per_sku=3, spread=0.5):
    centres = rng.normal(size=(n_skus, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(sku, n, noise):
        x = centres[sku] + noise * rng.normal(size=(n, dim)) / math.sqrt(dim)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    catalog = np.concatenate([draw(s, per_sku, spread) for s in range(n_skus)]).astype(np.float32)
    return centres, draw, catalog


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """120 catalog SKUs and 120 more from the same distribution that the shop does not sell."""
    rng = np.random.default_rng(7)
    sold, extra = 120, 120
    _, draw, catalog = synthetic_products(rng, sold + extra)
    owners = [f"sku-{s:03d}" for s in range(sold) for _ in range(3)]
    index = write_vectors_index(tmp_path_factory.mktemp("syn") / "idx", owners, catalog[:3 * sold])
    noise = 1.1  # customer photos: farther from the product than its catalog photos
    calib = np.concatenate([draw(s, 2, noise) for s in range(sold)]).astype(np.float32)
    calib_skus = [f"sku-{s:03d}" for s in range(sold) for _ in range(2)]
    test_known = np.concatenate([draw(s, 2, noise) for s in range(sold)]).astype(np.float32)
    test_unknown = np.concatenate([draw(s, 4, noise) for s in range(sold, sold + extra)]).astype(np.float32)
    return index, calib, calib_skus, test_known, test_unknown


def values(index, rule, vectors):
    rows = index.search(vectors, top_k=2)
    return np.array([rule.decide([m.score for m in row]).value for row in rows])


@pytest.mark.parametrize("far", [0.05, 0.2])
def test_leaving_skus_out_reaches_the_asked_false_accept_rate(synthetic, far):
    index, calib, calib_skus, test_known, test_unknown = synthetic
    result = calibrate_embedded(calib_skus, calib, index, far=far, folds=5)
    assert result.unknown == len(calib) and result.known == len(calib) and result.skus == 120
    assert all(r.false_accept_rate <= far for r in result.rules)  # on the calibration photos, by construction
    rule = result.reject_rule()
    # Products never seen by calibration, from the same distribution: the rate holds there too.
    reached = np.mean(values(index, rule, test_unknown) >= rule.threshold)
    assert abs(reached - far) <= max(0.04, far / 2), (rule, reached)
    assert result.chosen.known_accuracy == max(r.known_accuracy for r in result.rules)
    assert rule.calibration["far"] == far and rule.calibration["generation"] == index.generation


def test_calibration_counts_photos_of_skus_outside_the_index_as_unknown(synthetic):
    index, calib, calib_skus, _, test_unknown = synthetic
    skus = calib_skus + [f"other-{i}" for i in range(len(test_unknown))]
    result = calibrate_embedded(skus, np.concatenate([calib, test_unknown]), index, far=0.05)
    assert result.unknown == len(calib) + len(test_unknown) and result.known == len(calib)
    assert (result.left_out, result.others) == (len(calib), len(test_unknown))
    unlabelled = calibrate_embedded(calib_skus + [None] * len(test_unknown), np.concatenate([calib, test_unknown]),
                                    index, far=0.05)
    assert unlabelled.rules == result.rules


def test_each_group_of_unknowns_is_held_to_the_rate(synthetic):
    """Look-alikes of sold products (close to their catalog photos) are harder than left-out SKUs;
    the threshold must hold them to the rate too, not only the mixture."""
    index, calib, calib_skus, _, _ = synthetic
    rng = np.random.default_rng(11)
    look_alikes = calib[::2][:40] + 0.35 * rng.normal(size=(40, calib.shape[1])).astype(np.float32)
    look_alikes /= np.linalg.norm(look_alikes, axis=1, keepdims=True)
    result = calibrate_embedded(calib_skus + [None] * 40, np.concatenate([calib, look_alikes]), index, far=0.05)
    for r in result.rules:
        accepted = np.mean(values(index, RejectRule(r.rule, r.threshold), look_alikes) >= r.threshold)
        assert accepted <= 0.05, (r.rule, accepted)


def test_calibration_refuses_too_little(synthetic):
    index, calib, calib_skus, _, _ = synthetic
    with pytest.raises(CalibrationError, match="at least 5 SKUs"):
        calibrate_embedded(calib_skus[:6], calib[:6], index)
    with pytest.raises(CalibrationError, match="at least 20"):
        calibrate_embedded(calib_skus[:12], calib[:12], index, folds=2)
    with pytest.raises(CalibrationError, match="--far"):
        calibrate_embedded(calib_skus, calib, index, far=1.5)


def test_without_skus_leaves_them_out_of_the_search(synthetic):
    index, calib, calib_skus, _, _ = synthetic
    gone = {"sku-000", "sku-001"}
    rows = index.search(calib[:4], top_k=10, without_skus=gone)
    assert all(m.sku not in gone for row in rows for m in row)
    assert index.search(calib[:1], top_k=1)[0][0].sku == "sku-000"


# ------------------------------------------------------------------ a stored rule in answers

def test_stored_rule_is_applied_and_survives_writes(tmp_path):
    rng = np.random.default_rng(3)
    _, draw, catalog = synthetic_products(rng, 6, per_sku=2, spread=0.3)
    owners = [f"s{s}" for s in range(6) for _ in range(2)]
    index = write_vectors_index(tmp_path / "idx", owners, catalog)
    assert index.rejection is None
    photo = draw(0, 1, 0.3).astype(np.float32)
    plain = index.identify(photo, top_k=1)
    assert plain.decision is None and plain.match.sku == "s0"

    generation = set_rejection(tmp_path / "idx", RejectRule("score", 0.999))
    assert generation == index.generation + 1
    assert index.refresh() and index.rejection == RejectRule("score", 0.999)
    strict = index.identify(photo, top_k=1)
    assert strict.match is None and strict.matches[0].sku == "s0" and len(strict.matches) == 1
    assert strict.decision.rule == "score" and strict.decision.threshold == 0.999
    assert index.identify(photo, top_k=1, rejection=None).match.sku == "s0"  # --no-reject
    assert index.identify(photo, top_k=1, rejection=0.1).match.sku == "s0"  # --threshold
    margin = index.identify(photo, top_k=1, rejection=RejectRule("margin", 0.0))
    assert margin.decision.value == pytest.approx(plain.matches[0].score - index.search(photo, 2)[0][1].score)
    fused = index.identify(np.concatenate([photo, photo]), top_k=3)
    assert fused.match is None and fused.decision is not None

    remove_from_index(tmp_path / "idx", skus=["s5"])
    index.refresh()
    assert index.rejection == RejectRule("score", 0.999)  # writes keep the rule
    set_rejection(tmp_path / "idx", None)
    index.refresh()
    assert index.rejection is None
