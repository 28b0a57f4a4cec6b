"""Importers: each dataset layout built tiny on the fly, every image, label and category checked."""

from __future__ import annotations

import csv
import io

import bson
import pytest
from click.testing import CliRunner

from prodsearch.cli import cli
from prodsearch.errors import CatalogError
from prodsearch.indexer import build_index, read_listing
from prodsearch.catalog.importers import import_catalog

from conftest import fake_grocery_store, product_image


def manifest_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    product_image(seed, size=48).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_products10k(tmp_path):
    root = tmp_path / "p10k"
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
    train = [("0.jpg", 7, 1), ("1.jpg", 7, 1), ("2.jpg", 12, 3)]
    test = [("t0.jpg", 12, "Public"), ("t1.jpg", 7, "Private")]
    for i, (name, *_rest) in enumerate(train):
        product_image(i, 48).save(root / "train" / name)
    for i, (name, *_rest) in enumerate(test):
        product_image(100 + i, 48).save(root / "test" / name)
    with open(root / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows([("name", "class", "group"), *train, ("missing.jpg", 12, 3)])
    with open(root / "test_kaggletest.csv", "w", newline="") as f:
        csv.writer(f).writerows([("name", "class", "usage"), *test])

    report = import_catalog("products10k", root, tmp_path / "train.csv")
    assert (report.images, report.skus, report.categories) == (3, 2, 2)
    assert [(s.path.endswith("missing.jpg"), s.reason) for s in report.skipped] == [(True, "file not found")]
    rows = manifest_rows(tmp_path / "train.csv")
    assert [(r["image"], r["sku"], r["category"]) for r in rows] == [
        ("p10k/train/0.jpg", "7", "1"), ("p10k/train/1.jpg", "7", "1"), ("p10k/train/2.jpg", "12", "3")]

    import_catalog("products10k", root, tmp_path / "test.csv", splits=("test",))
    items = read_listing(tmp_path / "test.csv").items  # the test list has no groups: they come from train.csv
    assert [(it.path.name, it.sku, it.category) for it in items] == [("t0.jpg", "12", "3"), ("t1.jpg", "7", "1")]


def cdiscount_bson(path, products):
    with open(path, "wb") as f:
        for doc in products:
            f.write(bson.encode(doc))


def test_cdiscount_streams_bson_and_extracts_every_picture(tmp_path):
    root = tmp_path / "cdiscount"
    root.mkdir()
    pictures = {pid: [jpeg(10 * pid + n) for n in range(count)] for pid, count in ((1, 1), (2, 4), (3, 2))}
    cdiscount_bson(root / "train_example.bson", [
        {"_id": 1, "category_id": 1000010653, "imgs": [{"picture": p} for p in pictures[1]]},
        {"_id": 2, "category_id": 1000010653, "imgs": [{"picture": p} for p in pictures[2]]},
        {"_id": 3, "category_id": 1000004079, "imgs": [{"picture": p} for p in pictures[3]]},
        {"_id": 4, "category_id": 1000004079, "imgs": []},
    ])
    with open(root / "category_names.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([
            ("category_id", "category_level1", "category_level2", "category_level3"),
            (1000010653, "TELEPHONIE - GPS", "ACCESSOIRE TELEPHONE", "COQUE TELEPHONE - BUMPER TELEPHONE"),
            (1000004079, "ABONNEMENT / SERVICES", "CARTE PREPAYEE", "CARTE PREPAYEE MULTIMEDIA"),
        ])
    out = tmp_path / "out" / "cd.csv"
    report = import_catalog("cdiscount", root, out)
    assert (report.images, report.skus, report.products, report.categories) == (7, 3, 3, 2)
    assert [s.reason for s in report.skipped] == ["document without _id or pictures"]
    items = read_listing(out).items
    assert [(it.sku, it.product) for it in items] == [("1", "1")] + [("2", "2")] * 4 + [("3", "3")] * 2
    assert {it.sku: it.category for it in items} == {
        "1": "TELEPHONIE - GPS/ACCESSOIRE TELEPHONE/COQUE TELEPHONE - BUMPER TELEPHONE",
        "2": "TELEPHONIE - GPS/ACCESSOIRE TELEPHONE/COQUE TELEPHONE - BUMPER TELEPHONE",
        "3": "ABONNEMENT - SERVICES/CARTE PREPAYEE/CARTE PREPAYEE MULTIMEDIA",  # '/' in a name: still 3 levels
    }
    extracted = [it.path.read_bytes() for it in items]
    assert extracted == pictures[1] + pictures[2] + pictures[3]  # every picture, unchanged, in order
    assert items[0].path.parent == tmp_path / "out" / "cd-images" / "1000010653"

    again = import_catalog("cdiscount", root / "train_example.bson", out)  # a .bson file works too; re-run is safe
    assert again.images == 7 and [it.path.read_bytes() for it in read_listing(out).items] == extracted
    build = build_index(out, tmp_path / "idx", model="lite0", num_workers=0)
    assert (build.skus, build.images) == (3, 7)


def test_cdiscount_truncated_bson_keeps_what_was_read(tmp_path):
    docs = [{"_id": i, "category_id": 5, "imgs": [{"picture": jpeg(i)}]} for i in range(3)]
    cdiscount_bson(tmp_path / "train.bson", docs)
    data = (tmp_path / "train.bson").read_bytes()
    (tmp_path / "train.bson").write_bytes(data[: len(data) - 200])  # the last document is cut short
    report = import_catalog("cdiscount", tmp_path / "train.bson", tmp_path / "cd.csv")
    assert report.images == 2 and report.skipped[0].reason.startswith("unreadable BSON after offset")
    assert read_listing(tmp_path / "cd.csv").items[0].category == "5"  # no category_names.csv: the id


def test_grocery_store_splits_and_category_tree(tmp_path):
    root = fake_grocery_store(tmp_path / "gs")
    report = import_catalog("grocery-store", root, tmp_path / "catalog.csv")  # default: iconic + train
    assert (report.images, report.skus, report.categories) == (9, 3, 3)
    items = read_listing(tmp_path / "catalog.csv").items
    assert {it.sku: (it.name, it.category) for it in items} == {
        "Granny-Smith": ("Granny Smith", "Fruit/Apple"), "Oatly-Oat-Milk": ("Oatly Oat Milk", "Packages/Oat-Milk"),
        "Lime": ("Lime", "Fruit/Lime")}  # a class without fine sub-classes still gets top folder / coarse class
    assert sorted(it.path.name for it in items if it.sku == "Lime") == ["Lime_000.jpg", "Lime_001.jpg", "Lime_Iconic.jpg"]
    test = import_catalog("grocery-store", root / "dataset", tmp_path / "test.csv", splits=("test",))
    assert (test.images, test.skus) == (3, 3)


def test_import_cli_and_its_errors(tmp_path):
    root = fake_grocery_store(tmp_path / "gs")
    run = lambda *args: CliRunner().invoke(cli, ["import", *map(str, args)])  # noqa: E731
    result = run("grocery-store", root, "--out", tmp_path / "m.csv", "--split", "val", "--split", "test")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Wrote {tmp_path / 'm.csv'}: 6 images of 3 SKUs, 3 categories (")
    assert result.stderr == ""  # no progress bar off a terminal
    assert len(read_listing(tmp_path / "m.csv").items) == 6
    result = run("grocery-store", root, "--out", tmp_path / "n.csv", "--split", "holdout")
    assert result.exit_code == 1
    assert result.output == "Error: grocery-store has no split 'holdout'; its splits are iconic, train, val, test\n"
    result = run("products10k", tmp_path / "nothing", "--out", tmp_path / "n.csv")
    assert result.exit_code == 1 and result.output.startswith(f"Error: {tmp_path / 'nothing'} does not exist; expected a products10k dataset: train/")
    result = run("cdiscount", root, "--out", tmp_path / "n.csv")
    assert result.exit_code == 1 and "has none of train.bson, train_example.bson" in result.output
    assert not (tmp_path / "n.csv").exists() and not list(tmp_path.glob(".n.csv*"))


def test_unknown_format_is_refused(tmp_path):
    with pytest.raises(CatalogError, match="unknown format 'amazon'; choose one of products10k, cdiscount, grocery-store"):
        import_catalog("amazon", tmp_path, tmp_path / "m.csv")


def import_error(*args):
    result = CliRunner().invoke(cli, ["import", *map(str, args)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert len(result.stderr.splitlines()) == 1
    return result.stderr.strip()


def test_malformed_grocery_store_inputs_are_one_line_errors(tmp_path):
    root = fake_grocery_store(tmp_path / "gs")
    data = root / "dataset"
    (data / "val.txt").unlink()
    assert import_error("grocery-store", root, "--split", "val", "--out", tmp_path / "m.csv") == (
        f"Error: {data} has no val.txt; expected classes.csv with train.txt, val.txt and test.txt "
        "(in the folder or its dataset/)")
    (data / "test.txt").write_text("test/Fruit/Apple/Granny-Smith/x.jpg; 0; 0\n")
    assert import_error("grocery-store", root, "--split", "test", "--out", tmp_path / "m.csv") == (
        f"Error: {data / 'test.txt'} line 1 is malformed: expected 'path, class id, coarse class id'; "
        "is this the right dataset and format?")
    (data / "train.txt").write_text("train/a.jpg, zero, 0\n")
    assert "train.txt line 1 is malformed" in import_error("grocery-store", root, "--out", tmp_path / "m.csv")
    with open(data / "classes.csv", "a") as f:
        f.write("Broken,9\n")
    assert "classes.csv line 5 is malformed: expected name, class id" in import_error(
        "grocery-store", root, "--split", "iconic", "--out", tmp_path / "m.csv")
    assert not (tmp_path / "m.csv").exists()


def test_malformed_products10k_list_is_a_one_line_error(tmp_path):
    (tmp_path / "p10k" / "train").mkdir(parents=True)
    (tmp_path / "p10k" / "train.csv").write_bytes(b"name,class,group\n0.jpg,7,1\n1.jpg,\xe9t\xe9,1\n")
    assert import_error("products10k", tmp_path / "p10k", "--out", tmp_path / "m.csv") == (
        f"Error: {tmp_path / 'p10k' / 'train.csv'} is not UTF-8 text (byte 0xe9 at offset 33); "
        "is this the right dataset and format?")
    (tmp_path / "p10k" / "train.csv").write_text("name,class,group\n0.jpg,7,1\n\"1.jpg,7," + "x" * 200_000 + "\n")
    assert import_error("products10k", tmp_path / "p10k", "--out", tmp_path / "m.csv").startswith(
        f"Error: {tmp_path / 'p10k' / 'train.csv'} line 3 is malformed: a CSV line (field larger than field limit")


def test_cdiscount_category_id_that_is_not_a_number(tmp_path):
    root = tmp_path / "cd"
    root.mkdir()
    cdiscount_bson(root / "train_example.bson", [{"_id": 1, "category_id": 10, "imgs": [{"picture": jpeg(1)}]}])
    (root / "category_names.csv").write_text("category_id,category_level1,category_level2,category_level3\n"
                                             "10,A,B,C\nten,A,B,D\n")
    assert import_error("cdiscount", root, "--out", tmp_path / "m.csv") == (
        f"Error: {root / 'category_names.csv'} line 3 is malformed: category_id 'ten' is not a whole number; "
        "is this the right dataset and format?")


def test_one_bson_file_given_for_two_splits_is_read_once(tmp_path):
    cdiscount_bson(tmp_path / "one.bson", [{"_id": i, "category_id": 10, "imgs": [{"picture": jpeg(i)}]} for i in range(3)])
    report = import_catalog("cdiscount", tmp_path / "one.bson", tmp_path / "m.csv", splits=("train", "test"))
    assert report.images == 3 and len(manifest_rows(tmp_path / "m.csv")) == 3
