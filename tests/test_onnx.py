"""ONNX export: every kind of embedder computes the same vectors in ONNX Runtime as in torch, and an
index keeps its export, checked whole, rebuilt when damaged or foreign, never used then."""

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from prodsearch.cli import cli
from prodsearch.indexer.build import build_index
from prodsearch.indexer.product_index import ProductIndex
from prodsearch.retrieval import create_embedder, embed_files, embed_pil
from prodsearch.retrieval.checkpoint import save_checkpoint
from prodsearch.retrieval.encoders import create_encoder
from prodsearch.retrieval.onnx_encoder import OnnxEncoder, OnnxModelError
from prodsearch.retrieval.onnx_export import OPSET, export_onnx
from prodsearch.retrieval.onnx_files import MODEL_FILE
from prodsearch.retrieval.torch_encoder import TorchEncoder

from conftest import product_image, snapshot, write_folder_catalog


def trained_checkpoint(path):
    """A 'trained' embedder: a projection + BatchNorm head with non-trivial statistics, saved and loaded."""
    embedder = create_embedder("lite0", embed_dim=64, img_size=128)
    with torch.no_grad():
        bn = embedder.proj[1]
        bn.running_mean.uniform_(-0.1, 0.1)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
    return create_embedder(save_checkpoint(path, embedder))


KINDS = {
    "lite0-imagenet-224": lambda tmp: create_embedder("lite0"),
    "lite1-imagenet-200": lambda tmp: create_embedder("lite1", img_size=200),
    "lite2-imagenet-260": lambda tmp: create_embedder("lite2"),
    "b0-random-96": lambda tmp: create_embedder("b0", pretrained=False, img_size=96),
    "checkpoint-with-head": lambda tmp: trained_checkpoint(tmp / "model.pt"),
}


@pytest.mark.parametrize("kind", KINDS)
def test_onnx_embeddings_equal_torch(kind, tmp_path, real_photos):
    """Cosine >= 0.9999 on real photos, and the same nearest catalog image for every snapshot."""
    embedder = KINDS[kind](tmp_path)
    torch_side = TorchEncoder(embedder, "cpu", "fp32")
    onnx_side = create_encoder(embedder, runtime="onnx")
    assert onnx_side.config.to_dict() == embedder.config.to_dict() and onnx_side.dim == embedder.embed_dim
    a, b = embed_files(torch_side, real_photos).vectors, embed_files(onnx_side, real_photos).vectors
    assert len(a) == len(real_photos) and np.sum(a * b, axis=1).min() >= 0.9999
    catalog = [product_image(i) for i in range(12)]
    queries = [snapshot(img, i) for i, img in enumerate(catalog)]
    top1 = [np.argmax(embed_pil(enc, queries) @ embed_pil(enc, catalog).T, axis=1) for enc in (torch_side, onnx_side)]
    assert np.array_equal(*top1)


def test_export_has_a_dynamic_batch_and_a_pinned_opset(embedder):
    import onnx

    proto = onnx.load_from_string(export_onnx(embedder))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 224, 224]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["prodsearch.embedder"]) == embedder.config.to_dict()
    encoder = OnnxEncoder(proto.SerializeToString())
    for n in (1, 3):
        assert encoder.encode(np.zeros((n, 3, 224, 224), np.float32)).shape == (n, 1280)


def test_a_file_that_is_not_a_prodsearch_model_is_refused():
    with pytest.raises(OnnxModelError, match="not a readable ONNX model"):
        OnnxEncoder(b"garbage", name="x.onnx")


# ------------------------------------------------------------------ the export an index keeps

@pytest.fixture
def small_index(tmp_path, embedder):
    """An index with its fp32 export only (whatever this CPU's auto precision)."""
    catalog = write_folder_catalog(tmp_path / "cat", ["a", "b", "c"])
    build_index(catalog, tmp_path / "idx", model=embedder, runtime="onnx", precision="fp32", num_workers=0)
    return tmp_path / "idx"


def stored_models(index_dir):
    return sorted(p.name for p in index_dir.iterdir() if MODEL_FILE.match(p.name))


def answers(index_dir, photo, **options):
    result = ProductIndex.open(index_dir, **options).query([photo], top_k=3)[0]
    return [(m.sku, round(m.score, 4)) for m in result.matches]


def test_index_keeps_its_export_and_uses_it(small_index, tmp_path, monkeypatch):
    [name] = stored_models(small_index)
    photo = tmp_path / "cat" / "b" / "b_0.jpg"
    expected = answers(small_index, photo)
    assert expected[0][0] == "b"
    import prodsearch.indexer.models as models

    monkeypatch.setattr(models, "onnx_from_torch", lambda *a: pytest.fail("the stored export was not used"))
    assert answers(small_index, photo, runtime="onnx") == expected
    assert stored_models(small_index) == [name]


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "another model"])
def test_a_damaged_or_foreign_export_is_rebuilt_never_used(damage, small_index, tmp_path, caplog):
    [name] = stored_models(small_index)
    path = small_index / name
    photo = tmp_path / "cat" / "c" / "c_0.jpg"
    expected = answers(small_index, photo)
    data = bytearray(path.read_bytes())
    if damage == "flipped byte":  # in the weights: the model would load and answer wrongly
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "truncated":
        path.write_bytes(bytes(data[: len(data) // 3]))
    else:  # a valid export of another model, named with its own digest
        from prodsearch.retrieval.onnx_files import model_file_name

        other = export_onnx(create_embedder("lite0", img_size=96))
        path.unlink()
        path = small_index / model_file_name(other, "fp32")
        path.write_bytes(other)
    with caplog.at_level(logging.WARNING):
        assert answers(small_index, photo, runtime="onnx") == expected
    assert f"not using {path}" in caplog.text
    assert stored_models(small_index) == [name]  # exported again, and the bad file gone


def test_a_read_only_index_exports_in_memory(small_index, tmp_path, caplog):
    photo = tmp_path / "cat" / "a" / "a_0.jpg"
    expected = answers(small_index, photo)
    for name in stored_models(small_index):
        (small_index / name).unlink()
    os.chmod(small_index, 0o555)
    try:
        with caplog.at_level(logging.WARNING):
            assert answers(small_index, photo, runtime="onnx") == expected
    finally:
        os.chmod(small_index, 0o755)
    if os.geteuid() != 0:  # root writes anyway
        assert "could not keep the ONNX model" in caplog.text


def test_export_cli(tmp_path, embedder, small_index):
    out = tmp_path / "lite0.onnx"
    result = CliRunner().invoke(cli, ["export", "lite0", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["path"] == str(out) and report["max_difference"] < 1e-5 and report["opset"] == OPSET
    assert OnnxEncoder(out.read_bytes()).config.identity() == embedder.config.identity()
    for name in stored_models(small_index):
        (small_index / name).unlink()
    result = CliRunner().invoke(cli, ["export", "--index", str(small_index)])
    assert result.exit_code == 0 and len(stored_models(small_index)) == 1, result.output
    for args, message in [([], "give one of --out FILE.onnx or --index DIR"),
                          (["lite0", "--index", str(small_index)], "leave out MODEL"),
                          (["nope", "--out", str(out)], "unknown model 'nope'"),
                          ([str(tmp_path / "missing.pt"), "--out", str(out)], "does not exist")]:
        result = CliRunner().invoke(cli, ["export", *args])
        assert result.exit_code in (1, 2) and message in result.output, result.output


def test_info_names_the_stored_export_and_the_runtime(small_index, monkeypatch):
    from prodsearch.indexer.info import index_info
    from prodsearch.retrieval import runtime

    monkeypatch.setattr(runtime, "cuda_available", lambda: False)
    [name] = stored_models(small_index)
    info = index_info(small_index)
    assert info.onnx_models == {name: "ok"} and info.runtime == "onnx fp32 on cpu" and info.consistent
    path = small_index / name
    path.write_bytes(path.read_bytes()[:-10])
    assert index_info(small_index).onnx_models[name].startswith("damaged")
    result = CliRunner().invoke(cli, ["info", "--index", str(small_index)])
    assert f"onnx:       {name} (damaged" in result.output and "runtime:    onnx fp32 on cpu" in result.output


# ------------------------------------------------------------------ int8

@pytest.fixture(scope="module")
def real_index(tmp_path_factory, embedder, real_photos):
    """The real photos as a catalog, indexed with int8 asked for: both models kept."""
    from conftest import write_csv

    root = tmp_path_factory.mktemp("real")
    rows = [{"image": str(p), "sku": p.parent.name} for p in real_photos]
    build_index(write_csv(root / "catalog.csv", rows), root / "idx", model=embedder, precision="int8", num_workers=0)
    return root / "idx"


def test_int8_keeps_the_embeddings(real_index, real_photos):
    """Calibrated on the catalog's photos (the stem left in float), int8 stays close to fp32."""
    assert [MODEL_FILE.match(n).group(1) for n in stored_models(real_index)] == ["fp32", "int8"]
    fp32 = ProductIndex.open(real_index, precision="fp32")
    int8 = ProductIndex.open(real_index, precision="int8")
    assert (fp32.encoder.precision, int8.encoder.precision) == ("fp32", "int8")
    a, b = fp32.embed(real_photos).vectors, int8.embed(real_photos).vectors
    cosine = np.sum(a * b, axis=1)
    from prodsearch.retrieval.runtime import has_int8_dot_product

    # Without VNNI, ONNX Runtime's uint8 x int8 kernels would saturate: the weights are quantized to
    # 7 bits (reduce_range), which costs precision (measured on an AVX2 EPYC: mean 0.98, min 0.968).
    # Either way the index measures whether int8 keeps the shop's answers before it takes it.
    mean, low = (0.99, 0.97) if has_int8_dot_product() else (0.975, 0.96)
    assert cosine.mean() >= mean and cosine.min() >= low, cosine
    assert np.allclose(np.linalg.norm(b, axis=1), 1, atol=1e-5)


@pytest.mark.parametrize("fast_int8", [True, False])
def test_auto_takes_int8_only_where_the_cpu_makes_it_faster(real_index, real_photos, monkeypatch, fast_int8):
    from prodsearch.retrieval import runtime

    monkeypatch.setattr(runtime, "has_int8_dot_product", lambda: fast_int8)
    assert ProductIndex.open(real_index).encoder.precision == ("int8" if fast_int8 else "fp32")


def test_int8_asked_of_an_fp32_index_is_calibrated_on_its_photos(small_index, tmp_path, monkeypatch):
    from prodsearch.retrieval import runtime

    monkeypatch.setattr(runtime, "has_int8_dot_product", lambda: True)
    assert ProductIndex.open(small_index).encoder.precision == "fp32"  # auto never quantizes on its own
    assert ProductIndex.open(small_index, precision="int8").encoder.precision == "int8"
    assert sorted(MODEL_FILE.match(n).group(1) for n in stored_models(small_index)) == ["fp32", "int8"]
    assert ProductIndex.open(small_index).encoder.precision == "int8"  # kept for the next command


def test_int8_without_readable_catalog_photos_says_what_to_do(small_index, tmp_path):
    import shutil

    shutil.rmtree(tmp_path / "cat")
    product_image(5).save(tmp_path / "q.jpg")
    result = CliRunner().invoke(cli, ["query", str(tmp_path / "q.jpg"), "--index", str(small_index),
                                      "--precision", "int8"])
    assert result.exit_code == 1 and "none of them can be read here; use --precision fp32" in result.output
    result = CliRunner().invoke(cli, ["export", "--index", str(small_index), "--precision", "int8"])
    assert result.exit_code == 1 and "none of them can be read here" in result.output


def test_export_int8_into_an_index(small_index):
    result = CliRunner().invoke(cli, ["export", "--index", str(small_index), "--precision", "int8", "--json"])
    assert result.exit_code == 0, result.output
    assert MODEL_FILE.match(Path(json.loads(result.output)["path"]).name).group(1) == "int8"
    result = CliRunner().invoke(cli, ["export", "lite0", "--out", "x.onnx", "--precision", "int8"])
    assert result.exit_code == 2 and "use it with --index DIR" in result.output
