import random

import pytest

from prodsearch.eval.metrics import hits_at_k, top_k_accuracy


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
