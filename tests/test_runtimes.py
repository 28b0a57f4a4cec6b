"""Runtimes are interchangeable (an index built on one is queried on the other), chosen without
importing torch, and the ONNX runtime's commands never import torch, timm or torchvision."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from prodsearch.errors import DeviceError
from prodsearch.indexer.build import build_index
from prodsearch.indexer.product_index import ProductIndex
from prodsearch.retrieval import runtime
from prodsearch.retrieval.onnx_export import export_onnx
from prodsearch.retrieval.runtime import resolve_runtime

from conftest import snapshot, product_image, write_csv, write_folder_catalog

SKUS = ["apple", "bread", "cheese", "dates", "eggs", "flour"]


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    root = tmp_path_factory.mktemp("shop")
    catalog = write_folder_catalog(root / "catalog", SKUS, per_sku=2)
    photos = []
    for s, sku in enumerate(SKUS):
        path = root / "queries" / sku / "q.jpg"
        path.parent.mkdir(parents=True)
        snapshot(product_image(1000 * s), s).save(path)
        photos.append(path)
    return catalog, photos


@pytest.mark.parametrize("built_with,queried_with", [("torch", "onnx"), ("onnx", "torch")])
def test_an_index_built_on_one_runtime_answers_on_the_other(shop, tmp_path, embedder, built_with, queried_with):
    catalog, photos = shop
    build_index(catalog, tmp_path / "idx", model=embedder, runtime=built_with, precision="fp32", num_workers=0)
    same = ProductIndex.open(tmp_path / "idx", model=embedder, runtime=built_with, precision="fp32")
    other = ProductIndex.open(tmp_path / "idx", model=embedder, runtime=queried_with, precision="fp32")
    assert other.encoder.runtime == queried_with
    a, b = same.query(photos, top_k=3), other.query(photos, top_k=3)
    assert [r.matches[0].sku for r in a] == [r.matches[0].sku for r in b] == SKUS
    assert np.allclose([m.score for r in a for m in r.matches], [m.score for r in b for m in r.matches], atol=1e-5)


@pytest.mark.parametrize("asked,cuda,expected", [
    (("auto", "auto", "auto"), False, ("onnx", "cpu")),
    (("auto", "auto", "auto"), True, ("torch", "cuda")),
    (("auto", "cpu", "auto"), True, ("onnx", "cpu")),
    (("auto", "auto", "bf16"), False, ("torch", "cpu")),
    (("auto", "auto", "int8"), True, ("onnx", "cpu")),
    (("torch", "auto", "auto"), False, ("torch", "cpu")),
    (("onnx", "auto", "fp32"), True, ("onnx", "cpu")),
])
def test_runtime_choice(monkeypatch, asked, cuda, expected):
    monkeypatch.setattr(runtime, "cuda_available", lambda: cuda)
    assert resolve_runtime(*asked) == expected


@pytest.mark.parametrize("asked,message", [
    (("onnx", "cuda", "auto"), "the onnx runtime runs on the CPU"),
    (("torch", "cpu", "int8"), "--precision int8 runs on the onnx runtime"),
    (("onnx", "cpu", "bf16"), "--precision bf16 runs on the torch runtime"),
    (("tensorflow", "cpu", "auto"), "unknown runtime 'tensorflow'"),
    (("torch", "cuda", "auto"), "no CUDA GPU is available"),
])
def test_impossible_runtime_choices_say_what_to_do(monkeypatch, asked, message):
    monkeypatch.setattr(runtime, "cuda_available", lambda: False)
    with pytest.raises(DeviceError, match=message):
        resolve_runtime(*asked)


def test_onnx_commands_never_import_torch(shop, tmp_path, embedder):
    """index (from an exported model, and rebuilt), add, update, query and eval on the ONNX
    runtime, each in a fresh interpreter that records what it imported."""
    catalog, photos = shop
    model = tmp_path / "lite0.onnx"
    model.write_bytes(export_onnx(embedder))
    queries = write_csv(tmp_path / "queries.csv", [{"image": str(p), "sku": p.parent.name} for p in photos])
    more = write_folder_catalog(tmp_path / "more", ["grapes"], seed0=77)
    idx = str(tmp_path / "idx")
    commands = [["index", str(catalog), "--index", idx, "--model", str(model)],
                ["index", str(catalog), "--index", idx],
                ["add", str(more), "--index", idx],
                ["update", str(catalog), "--index", idx],
                ["query", str(photos[0]), "--index", idx, "--json"],
                ["eval", str(queries), "--index", idx, "--json"]]
    script = textwrap.dedent("""
        import json, sys
        from click.testing import CliRunner
        from prodsearch.cli import cli
        result = CliRunner().invoke(cli, json.loads(sys.argv[1]))
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "timm", "torchvision"))
        print(json.dumps({"exit": result.exit_code, "output": result.output, "heavy": heavy}))
    """)
    for args in commands:
        run = subprocess.run([sys.executable, "-c", script, json.dumps(args)], capture_output=True, text=True,
                             env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, timeout=300)
        report = json.loads(run.stdout.strip().splitlines()[-1])
        assert report["exit"] == 0, (args, report["output"], run.stderr)
        assert report["heavy"] == [], (args[0], report["heavy"][:5])
    assert json.loads(report["output"])["top1"] == 1.0
