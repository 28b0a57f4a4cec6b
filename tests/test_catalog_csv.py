"""The one CSV writer writes what the one reader reads."""

import os

import pytest

from prodsearch.catalog import CatalogCsvWriter, read_listing, write_catalog_csv

from conftest import product_image


def test_written_rows_read_back_as_the_same_items(tmp_path, monkeypatch):
    (tmp_path / "photos" / "milk").mkdir(parents=True)
    for name in ("a.jpg", "b.jpg"):
        product_image(len(name)).save(tmp_path / "photos" / "milk" / name)
    monkeypatch.chdir(tmp_path)
    rows = [{"image": tmp_path / "photos" / "milk" / "a.jpg", "sku": "milk", "name": "Milk, 3%", "category": "Dairy/Milk",
             "product": "p1"},
            {"image": "photos/milk/b.jpg", "sku": "milk", "name": None, "category": None, "product": "p1"}]  # relative to the cwd
    (tmp_path / "manifests").mkdir()
    out = write_catalog_csv(tmp_path / "manifests" / "c.csv", rows, ("name", "category", "product"))
    assert out.read_text().splitlines()[:2] == ["image,sku,name,category,product",
                                                '../photos/milk/a.jpg,milk,"Milk, 3%",Dairy/Milk,p1']
    items = read_listing(out).items
    assert [(it.path, it.sku, it.name, it.category, it.product) for it in items] == [
        ((tmp_path / "photos" / "milk" / "a.jpg").resolve(), "milk", "Milk, 3%", "Dairy/Milk", "p1"),
        ((tmp_path / "photos" / "milk" / "b.jpg").resolve(), "milk", None, None, "p1")]


def test_streaming_writer_counts_rows_and_refuses_unknown_columns(tmp_path):
    with CatalogCsvWriter(tmp_path / "c.csv", ()) as writer:
        for i in range(3):
            writer.write(tmp_path / f"{i}.jpg", f"s{i}")
    assert writer.rows == 3 and (tmp_path / "c.csv").read_text().splitlines()[0] == "image,sku"
    with pytest.raises(ValueError, match="not catalog CSV columns: price"):
        CatalogCsvWriter(tmp_path / "d.csv", ("price",))
    assert not os.path.exists(tmp_path / "d.csv")
