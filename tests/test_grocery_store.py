"""The Grocery Store layout becomes protocol A / B manifests that index and eval read."""

import pytest

from prodsearch.errors import CatalogError
from prodsearch.eval.grocery_store import score_protocols, write_grocery_store_manifests
from prodsearch.eval.report import markdown_table
from prodsearch.indexer import ProductIndex
from prodsearch.catalog.listing import read_listing

from conftest import fake_grocery_store

def test_manifests_for_both_protocols(tmp_path):
    manifests = write_grocery_store_manifests(fake_grocery_store(tmp_path / "gs"), tmp_path / "out")
    a, b = read_listing(manifests.catalog_a), read_listing(manifests.catalog_b)
    test = read_listing(manifests.test)
    assert [(it.sku, it.name, it.category) for it in a.items] == [
        ("Granny-Smith", "Granny Smith", "Fruit/Apple"), ("Oatly-Oat-Milk", "Oatly Oat Milk", "Packages/Oat-Milk"),
        ("Lime", "Lime", "Fruit/Lime")]
    assert all(it.path.name.endswith("_Iconic.jpg") for it in a.items)
    assert len(b.items) == 3 + 6 and b.items[:3] == a.items
    assert [it.sku for it in test.items] == ["Granny-Smith", "Oatly-Oat-Milk", "Lime"]
    assert len(read_listing(manifests.val).items) == 3
    assert not a.skipped and not b.skipped and not test.skipped


def test_not_the_dataset(tmp_path):
    with pytest.raises(CatalogError, match="is not the Grocery Store dataset"):
        write_grocery_store_manifests(tmp_path, tmp_path / "out")


def test_markdown_table():
    table = markdown_table([{"name": "A", "top-1": 0.30181, "img/s": 47.12}, {"name": "B", "top-1": 1.0, "img/s": 5}])
    assert table.splitlines() == [
        "| name | top-1 | img/s |",
        "| ---- | ----- | ----- |",
        "| A    | 0.302 | 47.1  |",
        "| B    | 1.000 | 5     |",
    ]


def test_even_and_odd_class_halves(tmp_path):
    root = fake_grocery_store(tmp_path / "gs")
    even = write_grocery_store_manifests(root, tmp_path / "out", classes="even")
    odd = write_grocery_store_manifests(root, tmp_path / "out", classes="odd")
    assert {it.sku for it in read_listing(even.catalog_b).items} == {"Granny-Smith", "Lime"}
    assert {it.sku for it in read_listing(odd.test).items} == {"Oatly-Oat-Milk"}
    assert even.catalog_b.name == "catalog_b_iconic_train_even.csv"


def test_both_protocols_scored_with_one_embedding_pass(tmp_path, embedder):
    manifests = write_grocery_store_manifests(fake_grocery_store(tmp_path / "gs"), tmp_path / "out")
    reports = score_protocols(embedder, manifests, manifests.test, tmp_path / "work")
    assert sorted(reports) == ["A", "B"] and all(r.n == 3 and r.products is None for r in reports.values())
    assert len(ProductIndex.open(tmp_path / "work" / "index-B")) == 8  # 3 iconic + 6 train, one a copy of its iconic
    assert reports["A"].seconds == reports["B"].seconds  # the same embedded queries served both
