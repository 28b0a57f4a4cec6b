"""Both catalog formats, and clear refusals of everything else."""

import pytest

from prodsearch.errors import CatalogError
from prodsearch.indexer.sources import read_listing

from conftest import product_image, write_csv, write_folder_catalog


def test_folder_catalog(tmp_path):
    root = write_folder_catalog(tmp_path / "cat", ["milk", "juice"], per_sku=2)
    (root / "juice" / "notes.txt").write_text("not an image")
    (root / "README.md").write_text("beside the SKU folders: ignored")
    (root / "milk" / ".DS_Store").write_bytes(b"\0")
    listing = read_listing(root)
    assert listing.kind == "folder"
    assert listing.skus == ["juice", "milk"]
    assert len(listing.items) == 4
    assert all(it.path.is_absolute() and it.path.is_file() for it in listing.items)
    assert [(s.path.endswith("notes.txt"), s.reason) for s in listing.skipped] == [(True, "unsupported file type .txt")]


def test_image_outside_sku_folder_is_skipped(tmp_path):
    root = write_folder_catalog(tmp_path / "cat", ["milk"])
    product_image(1).save(root / "loose.jpg")
    listing = read_listing(root)
    assert len(listing.items) == 1
    assert listing.skipped[0].reason.startswith("not inside a SKU folder")


def test_csv_catalog_relative_paths_and_metadata(tmp_path):
    (tmp_path / "imgs").mkdir()
    product_image(1).save(tmp_path / "imgs" / "a.jpg")
    product_image(2).save(tmp_path / "imgs" / "b.png")
    csv_path = write_csv(tmp_path / "catalog.csv", [
        {"image": "imgs/a.jpg", "sku": "A1", "name": "Milk 3%", "category": "Dairy/Milk"},
        {"image": "imgs/b.png", "sku": "B2", "name": "", "category": ""},
        {"image": "imgs/missing.jpg", "sku": "C3", "name": "", "category": ""},
        {"image": "", "sku": "D4", "name": "", "category": ""},
    ])
    listing = read_listing(csv_path)
    assert listing.kind == "csv"
    assert [(it.path.name, it.sku, it.name, it.category) for it in listing.items] == [
        ("a.jpg", "A1", "Milk 3%", "Dairy/Milk"), ("b.png", "B2", None, None)]
    assert [s.reason for s in listing.skipped] == ["file not found", "row without image or sku"]


def test_csv_minimal_header(tmp_path):
    product_image(1).save(tmp_path / "a.jpg")
    (tmp_path / "c.csv").write_text("image,sku\na.jpg,X\n")
    assert read_listing(tmp_path / "c.csv").items[0].sku == "X"


def test_missing_path(tmp_path):
    with pytest.raises(CatalogError, match=r"nowhere does not exist; expected a folder with one sub-folder per SKU"):
        read_listing(tmp_path / "nowhere")


def test_csv_with_wrong_header(tmp_path):
    (tmp_path / "c.csv").write_text("file,label\na.jpg,X\n")
    with pytest.raises(CatalogError, match="has header file,label; expected"):
        read_listing(tmp_path / "c.csv")


def test_other_file_types_are_refused(tmp_path):
    (tmp_path / "catalog.json").write_text("{}")
    with pytest.raises(CatalogError, match="is neither a folder nor a .csv file"):
        read_listing(tmp_path / "catalog.json")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CatalogError, match="^no images found in .*empty; expected"):
        read_listing(tmp_path / "empty")


def test_folder_without_images(tmp_path):
    (tmp_path / "cat" / "milk").mkdir(parents=True)
    (tmp_path / "cat" / "milk" / "a.txt").write_text("x")
    with pytest.raises(CatalogError, match=r"no images found in .*\(1 files skipped, e.g. .*a.txt: unsupported file type .txt\)"):
        read_listing(tmp_path / "cat")
