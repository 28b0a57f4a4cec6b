"""One way to drive every command: ``--json`` documents checked against the Python API's reports,
``-q`` (``--silent`` kept, hidden), ``--out`` for what a command writes, help on every option, and
``train``'s defaults taken from ``TrainConfig``."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from prodsearch.catalog.importers import import_catalog
from prodsearch.cli import cli
from prodsearch.eval.evaluate import evaluate
from prodsearch.indexer import ProductIndex, build_index
from prodsearch.indexer.lifecycle import add_to_index, remove_from_index, update_index
from prodsearch.retrieval import create_embedder
from prodsearch.synthetic import write_synthetic_dataset
from prodsearch.train_config import TrainConfig

from conftest import fake_grocery_store, write_folder_catalog

PROGRESS_COMMANDS = ("index", "add", "update", "eval", "calibrate", "train", "tune", "demo", "import", "stats")
REQUIRED = {"index": ["c", "--index", "i"], "add": ["c", "--index", "i"], "update": ["c", "--index", "i"],
            "eval": ["q", "--index", "i"], "calibrate": ["q", "--index", "i"], "train": ["t", "--out", "o"], "stats": ["c", "--out", "o"], "demo": [],
            "import": ["grocery-store", "s", "--out", "o.csv"], "tune": ["c", "--val", "p", "--index", "i"]}  # the least each command parses
JSON_COMMANDS = ("index", "add", "update", "remove", "import", "stats", "train", "demo", "query", "eval", "calibrate",
                 "info", "tune")


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def json_of(*args) -> dict:
    """The command's stdout, which must be one JSON document and nothing else."""
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def skipped_of(report) -> list[dict]:
    return [{"path": str(s.path), "reason": s.reason} for s in report.skipped]


def duplicates_of(report) -> list[dict]:
    return [{"path": str(d.path), "same_as": str(d.same_as), "sku": d.sku} for d in report.duplicates]


def assert_durations(data: dict, *keys: str) -> None:
    for key in keys:
        assert isinstance(data[key], float) and data[key] >= 0, (key, data[key])


def assert_same_change(data: dict, report) -> None:
    """``add``/``update``/``remove --json`` against the :class:`ChangeReport` of the same change."""
    counts = ("added", "removed", "changed", "unchanged", "kept_unreadable", "new_skus", "removed_skus")
    assert {k: data[k] for k in counts} == {k: getattr(report, k) for k in counts}
    assert (data["generation"] is None) == (report.generation is None)
    assert data["duplicates"] == duplicates_of(report) and data["skipped"] == skipped_of(report)
    assert_durations(data, "seconds", "embed_seconds", "images_per_second")


# ------------------------------------------------------------------ options: names, help, aliases

def commands() -> dict[str, click.Command]:
    return dict(cli.commands)


def test_every_option_of_every_command_has_help():
    missing = [f"{name} {param.opts[0]}" for name, command in [("prodsearch", cli), *commands().items()]
               for param in command.params
               if isinstance(param, click.Option) and param.name != "help" and not (param.help or "").strip()]
    assert missing == []


@pytest.mark.parametrize("name", JSON_COMMANDS)
def test_every_reporting_command_has_json(name):
    assert any(p.name == "as_json" and "--json" in p.opts for p in commands()[name].params)


@pytest.mark.parametrize("name", PROGRESS_COMMANDS)
def test_quiet_with_silent_as_a_hidden_alias(name):
    command = commands()[name]
    [quiet] = [p for p in command.params if p.name == "quiet"]
    assert quiet.opts == ["-q", "--quiet", "--silent"] and quiet.is_flag
    usage = command.get_help(click.Context(command, info_name=name))
    assert "-q, --quiet" in usage and "--silent" not in usage
    assert command.make_context(name, [*REQUIRED[name], "--silent"]).params["quiet"] is True
    assert command.make_context(name, [*REQUIRED[name], "-q"]).params["quiet"] is True
    assert command.make_context(name, REQUIRED[name]).params["quiet"] is False


def test_out_names_what_a_command_writes():
    """One meaning for --out: the file or folder a command writes (import: a file; the others: a folder)."""
    for name in ("import", "stats", "train", "demo"):
        [out] = [p for p in commands()[name].params if "--out" in p.opts]
        assert out.help and ("file" if name == "import" else "folder") in out.help.lower(), name
    demo = commands()["demo"]
    assert "--dir" not in demo.get_help(click.Context(demo, info_name="demo"))
    assert demo.make_context("demo", ["--dir", "shop"]).params["out"] == "shop"  # the old name still works


def test_train_defaults_are_train_configs():
    """With --recipe none, the command builds exactly TrainConfig's defaults."""
    train = commands()["train"]
    params = train.make_context("train", ["photos.csv", "--out", "run", "--recipe", "none"]).params
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    settings = {k: v for k, v in params.items() if k in names}
    assert TrainConfig(train="photos.csv", **settings) == TrainConfig(train="photos.csv", out="run")
    assert len(settings) >= 20  # every exposed setting, not a few
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for param in train.params:
        if param.name in fields:
            assert param.help == fields[param.name].metadata["help"]


# ------------------------------------------------------------------ --json against the Python API

@pytest.fixture(scope="module")
def small_embedder():
    return create_embedder(img_size=64)


@pytest.fixture
def terminal(monkeypatch):
    """Progress bars as a terminal gets them (click then writes each bar's label to the test's stderr)."""
    monkeypatch.setattr("prodsearch.cli.app.stderr_is_terminal", lambda: True)


def test_index_json_is_the_build_report(tmp_path, embedder, terminal):
    catalog = write_folder_catalog(tmp_path / "cat", ["a", "b", "c"], per_sku=2)
    shutil.copy(catalog / "a" / "a_0.jpg", catalog / "a" / "dup.jpg")  # a duplicate within a SKU
    shutil.copy(catalog / "a" / "a_1.jpg", catalog / "b" / "shared.jpg")  # the same file under two SKUs
    (catalog / "c" / "broken.jpg").write_bytes(b"")
    result = invoke("index", catalog, "--index", tmp_path / "cli", "--workers", 0, "--json")
    assert result.exit_code == 0, result.output
    assert "Embedding" in result.stderr  # the bar stays on stderr; stdout is the document alone
    data = json.loads(result.stdout)
    report = build_index(catalog, tmp_path / "api", model=embedder, num_workers=0)
    assert data["index_dir"] == str(tmp_path / "cli")
    assert (data["images"], data["skus"], data["shared_across_skus"]) == (report.images, report.skus,
                                                                          report.shared_across_skus) == (7, 3, 2)
    assert data["duplicates"] == duplicates_of(report) and len(data["duplicates"]) == 1
    assert data["skipped"] == skipped_of(report) == [{"path": str(catalog / "c" / "broken.jpg"), "reason": "empty file"}]
    assert_durations(data, "seconds", "embed_seconds", "images_per_second")
    assert len(ProductIndex.open(tmp_path / "cli")) == data["images"]


def test_add_update_remove_json_are_the_change_reports(tmp_path, small_embedder):
    """Each change runs twice, on two copies of one index: through the CLI and through the API."""
    catalog = write_folder_catalog(tmp_path / "cat", ["a", "b", "c"], per_sku=2)
    build_index(catalog, tmp_path / "cli", model=small_embedder, num_workers=0)
    shutil.copytree(tmp_path / "cli", tmp_path / "api")
    cli_idx, api_idx = tmp_path / "cli", tmp_path / "api"

    write_folder_catalog(catalog, ["d"], per_sku=2, seed0=70)
    (catalog / "a" / "broken.jpg").write_bytes(b"")
    data = json_of("add", catalog, "--index", cli_idx, "-q", "--workers", 0)
    assert_same_change(data, add_to_index(catalog, api_idx, num_workers=0))
    assert (data["added"], data["new_skus"], data["index_dir"]) == (2, ["d"], str(cli_idx))

    nothing = json_of("add", catalog, "--index", cli_idx, "-q", "--workers", 0)
    assert_same_change(nothing, add_to_index(catalog, api_idx, num_workers=0))
    assert nothing["generation"] is None and nothing["added"] == 0

    shutil.rmtree(catalog / "b")
    (catalog / "a" / "broken.jpg").unlink()
    data = json_of("update", catalog, "--index", cli_idx, "-q", "--workers", 0)
    assert_same_change(data, update_index(catalog, api_idx, num_workers=0))
    assert (data["removed"], data["removed_skus"]) == (2, ["b"])

    data = json_of("remove", "--index", cli_idx, "--sku", "d")
    assert_same_change(data, remove_from_index(api_idx, skus=["d"]))
    assert (data["removed"], data["removed_skus"], data["added"]) == (2, ["d"], 0)


def test_import_json_is_the_import_report(tmp_path, terminal):
    root = fake_grocery_store(tmp_path / "gs")
    result = invoke("import", "grocery-store", root, "--out", tmp_path / "cli.csv", "--split", "iconic",
                    "--split", "test", "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr == "Writing rows\n"  # the progress bar: a count of the rows written, on stderr
    data = json.loads(result.stdout)
    report = import_catalog("grocery-store", root, tmp_path / "api.csv", splits=("iconic", "test"))
    counts = ("images", "skus", "products", "categories")
    assert {k: data[k] for k in counts} == {k: getattr(report, k) for k in counts} == {
        "images": 6, "skus": 3, "products": 3, "categories": 3}
    assert data["manifest"] == str(tmp_path / "cli.csv") and data["skipped"] == skipped_of(report)
    assert_durations(data, "seconds")
    assert invoke("import", "grocery-store", root, "--out", tmp_path / "q.csv", "-q").stderr == ""


def test_stats_json_is_stats_json(tmp_path, terminal):
    root = write_folder_catalog(tmp_path / "cat", ["a", "b"], per_sku=2)
    shutil.copy(root / "a" / "a_0.jpg", root / "b" / "copy.jpg")
    (root / "b" / "broken.jpg").symlink_to("gone.jpg")
    result = invoke("stats", root, "--out", tmp_path / "stats", "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr == "Hashing\n"
    data = json.loads(result.stdout)
    written = json.loads((tmp_path / "stats" / "stats.json").read_text())
    assert {k: v for k, v in data.items() if k not in ("out", "plots")} == written
    assert data["out"] == str(tmp_path / "stats") and len(data["plots"]) == 4
    assert all(Path(p).parent == tmp_path / "stats" and Path(p).is_file() for p in data["plots"])
    assert data["skipped"] == [{"path": str(root / "b" / "broken.jpg"), "reason": "broken symlink (target missing)"}]
    assert data["duplicates"]["duplicate_images"] == 2
    assert invoke("stats", root, "--out", tmp_path / "s2", "-q").stderr == ""


def test_eval_json_lists_skipped_files(tmp_path, built_index):
    queries = shutil.copytree(built_index["queries"], tmp_path / "queries")
    (queries / "sku-0" / "empty.jpg").write_bytes(b"")
    data = json_of("eval", queries, "--index", built_index["index"], "-q", "--workers", 0)
    report = evaluate(queries, ProductIndex.open(built_index["index"]), num_workers=0)
    assert data["skipped"] == skipped_of(report) == [{"path": str(queries / "sku-0" / "empty.jpg"),
                                                      "reason": "empty file"}]
    assert (data["n"], data["top1"], data["top5"]) == (report.n, report.top1, report.top5)


def test_train_json_is_the_run(tmp_path):
    shop = write_synthetic_dataset(tmp_path / "shop", n_skus=6, snapshots_per_sku=4, size=64)
    data = json_of("train", shop.queries_csv, "--out", tmp_path / "run", "--val", shop.catalog_csv,
                   "--freeze-backbone", "--epochs", 1, "--img-size", 64, "--resize", 72, "--embed-dim", 32,
                   "--batch-size", 8, "--m-per-class", 2, "--device", "cpu", "--workers", 0, "-q", "--recipe", "none")
    assert data["out"] == str(tmp_path / "run") and data["recipe"] is None
    assert data["model_path"] == str(tmp_path / "run" / "model.pt") and Path(data["model_path"]).is_file()
    assert data["best_path"] == str(tmp_path / "run" / "best.pt")
    assert data["skus"] == 6 and sorted(data["classes"]) == sorted(p.sku for p in shop.products)
    history = json.loads((tmp_path / "run" / "history.json").read_text())  # what the API's run wrote
    assert [(r["stage"], r["epoch"], r["loss"], r["val_top1"], r["images"]) for r in data["history"]] == [
        (r["stage"], r["epoch"], r["loss"], r["val_top1"], r["images"]) for r in history] == [
        ("main", 1, data["history"][0]["loss"], data["history"][0]["val_top1"], data["history"][0]["images"])]
    assert data["history"][0]["seconds"] == round(history[0]["seconds"], 3)
    assert_durations(data, "seconds")
    assert_durations(data["history"][0], "seconds", "images_per_second")


def test_demo_json(tmp_path):
    data = json_of("demo", "--out", tmp_path / "demo", "--skus", 6, "--snapshots", 2, "--train-snapshots", 2, "-q")
    assert data["out"] == str(tmp_path / "demo") and (data["skus"], data["evaluation"]["n"]) == (6, 12)
    assert 1 <= data["product_lines"] <= 6
    assert data["build"]["images"] == len(ProductIndex.open(tmp_path / "demo" / "index")) == 6
    assert data["build"]["skipped"] == [] and data["evaluation"]["skipped"] == []
    assert data["example"]["error"] is None and len(data["example"]["matches"]) == 5
    assert Path(data["example"]["path"]).parent.name == data["example_truth"]
    assert_durations(data, "seconds")
    trained = data["trained"]
    assert trained["model_path"] == str(tmp_path / "demo" / "model" / "model.pt")
    assert trained["train_images"] == 6 * (1 + 2) and len(trained["history"]) == trained["epochs"]
    assert trained["build"]["images"] == len(ProductIndex.open(tmp_path / "demo" / "index-trained")) == 6
    assert trained["evaluation"]["n"] == 12 and 0 <= trained["evaluation"]["top1"] <= 1
    assert trained["example"]["path"] == data["example"]["path"] and len(trained["example"]["matches"]) == 5
    assert_durations(trained, "train_seconds")
