"""Accuracy at each level of the category tree and per category, against hand computations."""

import pytest

from prodsearch.eval.categories import CategoryAccuracy, LevelAccuracy, level_accuracy, per_category_accuracy


def test_level_accuracy_by_hand():
    truth = ["Fruit/Apple/Granny", "Fruit/Apple/Granny", "Fruit/Pear", "Dairy/Milk", None, "Fruit"]
    predicted = ["Fruit/Apple/Pink", "Fruit/Pear/Kaiser", "Fruit/Pear", "Fruit/Apple", "Fruit", "Fruit/Apple"]
    # level 1: 5 queries with a category; right: rows 0, 1, 2, 5 -> 4/5
    # level 2: rows 0-3 are deep enough; right: 0 (Fruit/Apple), 2 (Fruit/Pear) -> 2/4
    # level 3: rows 0-1; right: none -> 0/2
    assert level_accuracy(truth, predicted) == [LevelAccuracy(1, 5, 0.8), LevelAccuracy(2, 4, 0.5),
                                                LevelAccuracy(3, 2, 0.0)]


def test_level_accuracy_edge_cases():
    assert level_accuracy([], []) == []
    assert level_accuracy([None, ""], ["A", None]) == []
    assert level_accuracy(["A/B"], [None]) == [LevelAccuracy(1, 1, 0.0), LevelAccuracy(2, 1, 0.0)]
    with pytest.raises(ValueError):
        level_accuracy(["A"], [])


def test_per_category_accuracy_worst_first():
    truth = ["Fruit/Apple", "Fruit/Apple", "Fruit/Apple", "Dairy", "Dairy", "Veg", None]
    hits = [True, True, False, False, True, False, True]
    assert per_category_accuracy(truth, hits) == [
        CategoryAccuracy("Veg", 1, 0.0), CategoryAccuracy("Dairy", 2, 0.5), CategoryAccuracy("Fruit/Apple", 3, 2 / 3)]
    tie = per_category_accuracy(["B", "A", "A"], [False, False, False])
    assert [c.category for c in tie] == ["A", "B"]  # equal accuracy: the larger category first
