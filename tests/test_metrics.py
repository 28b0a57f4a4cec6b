import random

import numpy as np
import pytest

from prodsearch.eval.metrics import hits_at_k, recall_against_exact, top_k_accuracy


def plain_loop_accuracy(ranked, truth, k):
    hits = 0
    for r, t in zip(ranked, truth):
        for sku in r[:k]:
            if sku == t:
                hits += 1
                break
    return hits / len(truth)


def test_top_k_matches_a_plain_loop():
    rng = random.Random(0)
    skus = [f"s{i}" for i in range(10)]
    ranked = [rng.sample(skus, 5) for _ in range(200)]
    truth = [rng.choice(skus) for _ in range(200)]
    for k in (1, 3, 5):
        assert top_k_accuracy(ranked, truth, k) == pytest.approx(plain_loop_accuracy(ranked, truth, k))


def test_edge_cases():
    assert top_k_accuracy([], [], 1) == 0.0
    assert hits_at_k([["a"], []], ["a", "b"], 5) == [True, False]
    with pytest.raises(ValueError):
        hits_at_k([["a"]], [], 1)


def test_recall_against_exact_equals_a_plain_loop():
    rng = np.random.default_rng(0)
    truth = np.array([rng.permutation(50)[:10] for _ in range(30)])
    found = truth.copy()
    found[::3, 0] = 99  # a wrong first neighbour in 10 of 30 rows
    found[::2] = np.roll(found[::2], 1, axis=1)  # half the rows in another order
    for k in (1, 5, 10):
        loop = []
        for f, t in zip(found, truth):
            if k == 1:
                loop.append(f[0] == t[0])
            else:
                loop.append(sum(1 for x in f[:k] if x in t[:k]) / k)
        assert recall_against_exact(found, truth, k) == pytest.approx(sum(loop) / len(loop))
        assert 0 < recall_against_exact(found, truth, k) < 1
    assert recall_against_exact(truth, truth, 1) == recall_against_exact(truth, truth, 10) == 1.0
