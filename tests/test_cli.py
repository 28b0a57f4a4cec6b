"""Every command through CliRunner, results checked through the API, errors as 'Error: ...' + exit 1."""

import json

import pytest
from click.testing import CliRunner

from prodsearch.cli import cli
from prodsearch.indexer import ProductIndex

from conftest import product_image, write_folder_catalog


@pytest.fixture
def runner():
    return CliRunner()


def run(runner, *args):
    return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_index_query_eval_end_to_end(runner, tmp_path, built_index):
    catalog, queries = built_index["catalog"], built_index["queries"]
    (catalog / "sku-0" / "broken.jpg").write_bytes(b"")
    try:
        result = run(runner, "index", catalog, "--index", tmp_path / "idx", "--silent")
    finally:
        (catalog / "sku-0" / "broken.jpg").unlink()
    assert result.exit_code == 0, result.output
    assert f"Indexed 7 images of 6 SKUs into {tmp_path / 'idx'}" in result.output
    assert "skipped: 1" in result.output and "broken.jpg: empty file" in result.output
    assert "images/s" in result.output
    index = ProductIndex.open(tmp_path / "idx")
    assert len(index) == 7 and len(index.skus) == 6

    photo = queries / "sku-3" / "q.jpg"
    result = run(runner, "query", photo, "--index", tmp_path / "idx", "--top-k", 3)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == str(photo) and lines[1].lstrip().startswith("1. sku-3 ") and len(lines) == 4
    with runner.isolated_filesystem(temp_dir=catalog.parent):  # catalog photos shown relative to the working folder
        shown = run(runner, "query", photo, "--index", tmp_path / "idx", "--top-k", 1).output.splitlines()[1]
    assert shown.endswith(f"(../{catalog.name}/sku-3/sku-3_0.jpg)"), shown

    result = run(runner, "query", photo, queries / "sku-1" / "q.jpg", "--index", tmp_path / "idx", "--json")
    answers = json.loads(result.output)
    assert [a["matches"][0]["sku"] for a in answers] == ["sku-3", "sku-1"]
    assert set(answers[0]["matches"][0]) == {"sku", "score", "name", "category", "image_id", "image_path"}
    assert answers[0]["matches"][0]["image_path"].endswith("sku-3_0.jpg")

    result = run(runner, "eval", queries, "--index", tmp_path / "idx", "--json", "--silent")
    report = json.loads(result.output)
    assert (report["n"], report["top1"], report["top5"]) == (6, 1.0, 1.0)
    result = run(runner, "eval", queries, "--index", tmp_path / "idx", "--silent")
    assert "n: 6\ntop-1: 1.0000\ntop-5: 1.0000" in result.output


def test_index_progress_bar_and_quiet(runner, tmp_path, monkeypatch):
    catalog = write_folder_catalog(tmp_path / "cat", ["a", "b"])
    piped = runner.invoke(cli, ["index", str(catalog), "--index", str(tmp_path / "i0")])
    assert piped.exit_code == 0 and piped.stderr == ""  # bars are for a terminal: piped, stderr stays empty
    monkeypatch.setattr("prodsearch.cli.app.stderr_is_terminal", lambda: True)
    noisy = runner.invoke(cli, ["index", str(catalog), "--index", str(tmp_path / "i1")])
    quiet = runner.invoke(cli, ["index", str(catalog), "--index", str(tmp_path / "i2"), "-q"])
    silent = runner.invoke(cli, ["index", str(catalog), "--index", str(tmp_path / "i3"), "--silent"])  # the old name
    assert "Embedding" in noisy.stderr and "Embedding" not in noisy.stdout
    assert "Embedding" not in quiet.output and "Embedding" not in silent.output


def expect_error(result, message):
    assert result.exit_code == 1, result.output
    assert result.output.splitlines()[-1] == f"Error: {message}"
    assert "Traceback" not in result.output


def test_index_errors(runner, tmp_path):
    expect_error(run(runner, "index", tmp_path / "nope", "--index", tmp_path / "idx"),
                 f"{tmp_path / 'nope'} does not exist; expected a folder with one sub-folder per SKU "
                 "(catalog/<sku>/*.jpg) or a CSV file with header image,sku[,name,category,product]")
    (tmp_path / "empty").mkdir()
    expect_error(run(runner, "index", tmp_path / "empty", "--index", tmp_path / "idx"),
                 f"no images found in {tmp_path / 'empty'}; expected a folder with one sub-folder per SKU "
                 "(catalog/<sku>/*.jpg) or a CSV file with header image,sku[,name,category,product]")
    (tmp_path / "docs" / "sku").mkdir(parents=True)
    (tmp_path / "docs" / "sku" / "a.txt").write_text("x")
    result = run(runner, "index", tmp_path / "docs", "--index", tmp_path / "idx")
    assert result.exit_code == 1 and result.output.startswith(f"Error: no images found in {tmp_path / 'docs'} (1 files skipped")
    (tmp_path / "bad" / "sku").mkdir(parents=True)
    (tmp_path / "bad" / "sku" / "a.jpg").write_bytes(b"")
    expect_error(run(runner, "index", tmp_path / "bad", "--index", tmp_path / "idx", "--silent"),
                 f"none of the 1 image files in {tmp_path / 'bad'} could be read; e.g. {tmp_path / 'bad' / 'sku' / 'a.jpg'}: empty file")
    catalog = write_folder_catalog(tmp_path / "cat", ["a"])
    expect_error(run(runner, "index", catalog, "--index", tmp_path / "idx", "--model", "vgg"),
                 "unknown model 'vgg'; choose one of: efficientnet_b0, efficientnet_b1, efficientnet_b2, "
                 "efficientnet_b3, tf_efficientnet_lite0, tf_efficientnet_lite1, tf_efficientnet_lite2")


def test_query_errors(runner, tmp_path, built_index):
    idx = built_index["index"]
    expect_error(run(runner, "query", tmp_path / "missing.jpg", "--index", idx),
                 f"cannot answer {tmp_path / 'missing.jpg'}: file not found")
    (tmp_path / "notes.jpg").write_text("shopping list")
    expect_error(run(runner, "query", tmp_path / "notes.jpg", "--index", idx),
                 f"cannot answer {tmp_path / 'notes.jpg'}: not an image (unrecognised format)")
    (tmp_path / "plain").mkdir()
    product_image(1).save(tmp_path / "p.jpg")
    expect_error(run(runner, "query", tmp_path / "p.jpg", "--index", tmp_path / "plain"),
                 f"{tmp_path / 'plain'} is not a prodsearch index (no manifest.json); "
                 f"build one with: prodsearch index CATALOG --index {tmp_path / 'plain'}")
    result = run(runner, "query", tmp_path / "p.jpg", "--index", idx, "--model", "lite1")
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: index {idx} was built with model tf_efficientnet_lite0 but this query would use tf_efficientnet_lite1")


def test_eval_errors(runner, tmp_path, built_index):
    expect_error(run(runner, "eval", tmp_path / "nope", "--index", built_index["index"]),
                 f"{tmp_path / 'nope'} does not exist; expected a folder with one sub-folder per SKU "
                 "(catalog/<sku>/*.jpg) or a CSV file with header image,sku[,name,category,product]")
    result = run(runner, "eval", built_index["queries"], "--index", built_index["index"], "--model", "lite1")
    assert result.exit_code == 1
    assert "was built with model tf_efficientnet_lite0 but this query would use tf_efficientnet_lite1" in result.output
    expect_error(run(runner, "eval", built_index["queries"], "--index", tmp_path / "nothing"),
                 f"index folder {tmp_path / 'nothing'} does not exist; "
                 f"build one with: prodsearch index CATALOG --index {tmp_path / 'nothing'}")


def test_device_cuda_without_gpu(runner, tmp_path, built_index, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    expect_error(run(runner, "eval", built_index["queries"], "--index", built_index["index"], "--device", "cuda"),
                 "--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")


def test_demo_small(runner, tmp_path):
    result = run(runner, "demo", "--out", tmp_path / "demo", "--skus", 6, "--snapshots", 2, "--train-snapshots", 2,
                 "-q")
    assert result.exit_code == 0, result.output
    assert "Generated 6 SKUs" in result.output
    assert "12 customer snapshots to evaluate and 12 to train on" in result.output
    assert f"Indexed 6 images of 6 SKUs into {tmp_path / 'demo' / 'index'}\n" in result.output
    assert "Trained the embedding head on 18 photos" in result.output
    assert f"Indexed 6 images of 6 SKUs into {tmp_path / 'demo' / 'index-trained'}\n" in result.output
    lines = result.output.splitlines()
    table = lines.index(next(line for line in lines if line.startswith("Customer snapshots (n=12)")))
    assert lines[table].split()[-2:] == ["ImageNet", "trained"]
    assert [line.split()[0] for line in lines[table + 1:table + 3]] == ["top-1", "top-5"]
    assert all(0 <= float(v) <= 1 for line in lines[table + 1:table + 3] for v in line.split()[1:])
    example = lines.index(next(line for line in lines if line.startswith("Example query (true SKU: ")))
    assert lines[example + 2].split() == ["ImageNet", "trained"]
    answers = lines[example + 3:example + 8]  # rank, then each model's SKU and score
    assert [line.split()[0] for line in answers] == ["1.", "2.", "3.", "4.", "5."]
    assert all(len(line.split()) == 5 for line in answers)
    assert len(ProductIndex.open(tmp_path / "demo" / "index")) == len(ProductIndex.open(
        tmp_path / "demo" / "index-trained")) == 6
    assert (tmp_path / "demo" / "model" / "model.pt").is_file()


def test_demo_without_training(runner, tmp_path):
    result = run(runner, "demo", "--out", tmp_path / "demo", "--skus", 4, "--snapshots", 1, "--no-train", "-q")
    assert result.exit_code == 0, result.output
    assert "Customer snapshots: n=4  top-1 " in result.output and "to train on" not in result.output
    assert "Example query (true SKU: " in result.output and "  1. " in result.output
    assert "Trained" not in result.output and not (tmp_path / "demo" / "index-trained").exists()
    assert not (tmp_path / "demo" / "data" / "train").exists()


def test_query_within_a_category(runner, tmp_path):
    from conftest import fake_grocery_store

    root = fake_grocery_store(tmp_path / "gs")
    assert run(runner, "import", "grocery-store", root, "--out", tmp_path / "catalog.csv", "--split", "iconic").exit_code == 0
    assert run(runner, "index", tmp_path / "catalog.csv", "--index", tmp_path / "idx", "--silent").exit_code == 0
    photo = root / "dataset" / "test" / "Fruit" / "Apple" / "Granny-Smith" / "Granny-Smith_000.jpg"
    answers = json.loads(run(runner, "query", photo, "--index", tmp_path / "idx", "--json").output)
    assert answers[0]["matches"][0]["sku"] == "Granny-Smith"
    result = run(runner, "query", photo, "--index", tmp_path / "idx", "--category", "Packages", "--json")
    assert [m["sku"] for m in json.loads(result.output)[0]["matches"]] == ["Oatly-Oat-Milk"]
    result = run(runner, "query", photo, "--index", tmp_path / "idx", "--category", "Fruit/", "--json")
    assert [m["category"] for m in json.loads(result.output)[0]["matches"]] == ["Fruit/Apple", "Fruit/Lime"]
    assert run(runner, "import", "grocery-store", root, "--out", tmp_path / "test.csv", "--split", "test").exit_code == 0
    report = json.loads(run(runner, "eval", tmp_path / "test.csv", "--index", tmp_path / "idx", "--json", "--silent").output)
    assert [lv["level"] for lv in report["levels"]] == [1, 2] and all(lv["n"] == 3 for lv in report["levels"])
    assert report["levels"][0]["top1"] >= report["levels"][1]["top1"] >= report["top1"]
    assert sorted(c["category"] for c in report["categories"]) == ["Fruit/Apple", "Fruit/Lime", "Packages/Oat-Milk"]
    assert [c["top1"] for c in report["categories"]] == sorted(c["top1"] for c in report["categories"])
    text = run(runner, "eval", tmp_path / "test.csv", "--index", tmp_path / "idx", "--silent").output
    assert "category level 1: " in text and "top-1 per category, worst first (3 of 3):" in text
    result = run(runner, "query", photo, "--index", tmp_path / "idx", "--category", "Dairy")
    assert result.exit_code == 1
    assert result.output == (f"Error: no products in category 'Dairy' in {tmp_path / 'idx'}; "
                             "top-level categories: Fruit, Packages\n")


def test_several_photos_as_one_product(runner, tmp_path, built_index):
    from conftest import snapshot, write_csv

    rows = []
    for s, sku in enumerate(built_index["skus"]):
        for shot in range(2):
            path = tmp_path / f"{sku}-{shot}.jpg"
            snapshot(product_image(1000 * s), seed=50 + 2 * s + shot).save(path, quality=90)
            rows.append({"image": path.name, "sku": sku, "product": f"p{s}"})
    queries = write_csv(tmp_path / "queries.csv", rows)
    idx = built_index["index"]
    result = run(runner, "query", tmp_path / "sku-2-0.jpg", tmp_path / "sku-2-1.jpg", "--index", idx, "--as-one", "--top-k", 2)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"2 photos as one product: {tmp_path / 'sku-2-0.jpg'}, {tmp_path / 'sku-2-1.jpg'}"
    assert lines[1].lstrip().startswith("1. sku-2 ") and len(lines) == 3
    (tmp_path / "bad.jpg").write_bytes(b"not a photo")
    result = run(runner, "query", tmp_path / "sku-2-0.jpg", tmp_path / "bad.jpg", "--index", idx, "--as-one", "--json")
    assert result.exit_code == 1 and result.stderr == (f"Error: 1 of 2 photos could not be answered: {tmp_path / 'bad.jpg'}: "
                                                       "not an image (unrecognised format)\n")
    fused = json.loads(result.stdout)
    assert fused["matches"][0]["sku"] == "sku-2" and list(fused["errors"]) == [str(tmp_path / "bad.jpg")]
    result = run(runner, "query", tmp_path / "bad.jpg", "--index", idx, "--as-one")
    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == f"Error: cannot answer {tmp_path / 'bad.jpg'}: not an image (unrecognised format)"

    report = json.loads(run(runner, "eval", queries, "--index", idx, "--json", "--silent").output)
    assert report["n"] == 12 and report["products"] == {"n": 6, "photos": 12, "top1": 1.0, "top5": 1.0}
    text = run(runner, "eval", queries, "--index", idx, "--silent").output
    assert "products: 6 (12 photos fused per product)  top-1 1.0000  top-5 1.0000" in text
    assert json.loads(run(runner, "eval", built_index["queries"], "--index", idx, "--json", "--silent").output)["products"] is None


def test_index_type_option(runner, tmp_path, built_index):
    catalog = built_index["catalog"]
    result = run(runner, "index", catalog, "--index", tmp_path / "idx", "--index-type", "Fancy42", "--silent")
    assert result.exit_code == 1 and result.output.startswith("Error: FAISS cannot build index type 'Fancy42' for 1280-d")
    assert not (tmp_path / "idx").exists()
    result = run(runner, "index", catalog, "--index", tmp_path / "idx", "--index-type", "HNSW16,Flat", "--silent")
    assert result.exit_code == 0, result.output
    index = ProductIndex.open(tmp_path / "idx")
    assert (index.manifest.index_type, index.manifest.index_factory) == ("IndexHNSWFlat", "HNSW16,Flat")
    assert run(runner, "index", catalog, "--index", tmp_path / "idx", "--silent").exit_code == 0  # auto: keeps HNSW
    result = run(runner, "index", catalog, "--index", tmp_path / "idx", "--index-type", "Flat", "--silent")
    assert result.exit_code == 1
    assert result.output == (f"Error: {tmp_path / 'idx'} holds a HNSW16,Flat index and a rebuild in place keeps its "
                             "type; to build a Flat index, remove the folder or choose another --index\n")
