"""Ensembles of backbones named like any model (``lite0@64+lite1@96``): parsed, built, exported,
quantized and indexed as one model whose vectors are its members' side by side; training refuses them."""

import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from prodsearch.cli import cli
from prodsearch.errors import UnknownModelError
from prodsearch.indexer.product_index import ProductIndex
from prodsearch.retrieval.embedder import parse_model_name
from prodsearch.retrieval.encoders import as_int8, onnx_from_torch, wants_int8
from prodsearch.retrieval.ensemble import EnsembleError, resize_scale
from prodsearch.retrieval.factory import create_embedder
from prodsearch.retrieval.onnx_graph import _stems
from prodsearch.retrieval.torch_encoder import TorchEncoder
from prodsearch.retrieval.training import TrainConfig, TrainingError, train

from conftest import product_image, write_folder_catalog

NAME = "tf_efficientnet_lite0@64+tf_efficientnet_lite1@96"  # tiny sizes: fast, still two real backbones
SKUS = ["apple", "bread", "cheese", "dates"]


@pytest.fixture(scope="module")
def ensemble():
    return create_embedder("lite0@64+lite1@96")


@pytest.fixture(scope="module")
def batch():
    return np.random.default_rng(0).standard_normal((3, 3, 96, 96), dtype=np.float32)


# ------------------------------------------------------------------ names

def test_names_list_members_with_optional_sizes():
    assert parse_model_name("lite0") == [("tf_efficientnet_lite0", None)]
    assert parse_model_name("tf_efficientnet_lite2@448") == [("tf_efficientnet_lite2", 448)]
    assert parse_model_name("lite0 + LITE2@448") == [("tf_efficientnet_lite0", None), ("tf_efficientnet_lite2", 448)]
    assert parse_model_name("lite0@224+lite0@448") == [("tf_efficientnet_lite0", 224), ("tf_efficientnet_lite0", 448)]


@pytest.mark.parametrize("name,message", [
    ("lite0+resnet9000", "unknown model 'resnet9000'; choose one of"),
    ("lite0+", "has an empty member"),
    ("lite0@big", "the input size after '@' must be a number of pixels from 32 to 1024"),
    ("lite0@8", "must be a number of pixels from 32"),
    ("lite0@", "must be a number of pixels"),
    ("lite0@96+tf_efficientnet_lite0@96", "lists the same member twice"),
])
def test_bad_names_say_what_is_wrong(name, message):
    with pytest.raises(UnknownModelError, match=message):
        create_embedder(name)


def test_a_single_name_with_a_size_is_that_input_size():
    assert create_embedder("lite1@96").config == create_embedder("tf_efficientnet_lite1", img_size=96).config
    with pytest.raises(UnknownModelError, match="asks for 96 px and the image size option for 128 px"):
        create_embedder("lite1@96", img_size=128)


def test_resize_scales_land_on_the_exact_size():
    for source in range(33, 700, 7):
        for target in range(32, source, 11):
            scale = resize_scale(source, target)
            assert math.floor(source * scale) == target == math.floor(np.float32(source) * np.float32(scale))


# ------------------------------------------------------------------ the model

def test_ensemble_config_describes_it_and_rebuilds_it(ensemble):
    config = ensemble.config
    assert config.name == NAME and config.label == NAME and not config.head
    assert config.embed_dim == ensemble.embed_dim == 1280 + 1280
    lite1 = create_embedder("lite1@96").config
    assert config.data_config == lite1.data_config  # the largest member's preprocessing
    assert config.weights.count("imagenet:") == 2 and lite1.weights in config.weights
    # what an index's manifest passes back: the name and the input size
    assert create_embedder(config.name, img_size=96).config == config


def test_ensembles_that_cannot_be_built_say_why():
    with pytest.raises(EnsembleError, match="takes 96 px images .* not 128"):
        create_embedder(NAME, img_size=128)
    with pytest.raises(EnsembleError, match="no embedding head to train"):
        create_embedder(NAME, embed_dim=32)
    with pytest.raises(EnsembleError, match="normalise their input differently"):
        create_embedder("lite0@64+b0@64", pretrained=False)


def test_output_is_the_members_normalised_embeddings_side_by_side(ensemble, batch):
    lite0, lite1 = create_embedder("lite0@64"), create_embedder("lite1@96")
    x = torch.from_numpy(batch)
    with torch.inference_mode():
        small = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
        expected = torch.cat([F.normalize(lite0(small), dim=1), F.normalize(lite1(x), dim=1)], dim=1) / math.sqrt(2)
        out = ensemble(x)
    assert out.shape == (3, 2560)
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)


def test_onnx_and_int8_compute_what_torch_does(ensemble, batch, tmp_path):
    torch_side = TorchEncoder(ensemble, "cpu", "fp32").encode(batch)
    fp32 = onnx_from_torch(ensemble)
    assert fp32.config.to_dict() == ensemble.config.to_dict() and fp32.dim == 2560
    assert np.abs(fp32.encode(batch) - torch_side).max() < 1e-4
    assert np.abs(fp32.encode(batch[:1]) - torch_side[:1]).max() < 1e-4  # the batch axis stays dynamic
    import onnx

    graph = onnx.load_from_string(fp32.model_bytes).graph
    ops = {node.name: node.op_type for node in graph.node}
    assert sorted(ops[name] for name in _stems(graph)) == ["Conv", "Conv", "Resize"]  # kept in float by int8
    photos = []
    for i in range(8):
        photos.append(tmp_path / f"{i}.jpg")
        product_image(i).save(photos[-1])
    int8 = as_int8(fp32, photos)
    assert int8.precision == "int8" and int8.config.to_dict() == ensemble.config.to_dict()
    from prodsearch.retrieval.embedding import preprocessed

    arrays = preprocessed(photos, ensemble.data_config)
    cosine = np.sum(int8.encode(arrays) * fp32.encode(arrays), axis=1)
    from prodsearch.retrieval.runtime import has_int8_dot_product

    # Without VNNI the weights keep 7 bits (reduce_range), which costs these tiny 64/96 px members
    # on drawn photos more than lite0 at 224 on real ones (test_onnx): mean 0.937, min 0.841,
    # the same on an AVX2 EPYC and with reduce_range forced on an AVX512-VNNI EPYC; 8 bits with
    # VNNI: mean 0.986, min 0.972. A wrong graph scores far below either.
    mean, low = (0.975, 0.95) if has_int8_dot_product() else (0.92, 0.8)
    assert cosine.mean() >= mean and cosine.min() >= low, cosine


# ------------------------------------------------------------------ an index and training

def test_an_index_built_with_an_ensemble_reopens_and_answers(tmp_path):
    catalog = write_folder_catalog(tmp_path / "catalog", SKUS, per_sku=1)
    result = CliRunner().invoke(cli, ["index", str(catalog), "--index", str(tmp_path / "idx"),
                                      "--model", "lite0@64+lite1@96", "--workers", "0", "--silent"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["model"]["name"] == NAME and manifest["embed_dim"] == 2560
    photos = [catalog / sku / f"{sku}_0.jpg" for sku in SKUS]  # at 64-96 px only the photos themselves are sure
    for runtime in ("onnx", "torch"):  # the stored export; the model rebuilt from the manifest's name
        index = ProductIndex.open(tmp_path / "idx", runtime=runtime)
        assert index.encoder.config.name == NAME
        if runtime == "onnx":  # where this CPU wants int8, the index keeps what its int8 check chose
            check = manifest.get("precision_check")
            if wants_int8("auto", can_calibrate=True):
                assert check is not None and index.encoder.precision == check["chosen"], check
            else:
                assert index.encoder.precision == "fp32"
        results = index.query(photos, top_k=2)
        assert [r.matches[0].sku for r in results] == SKUS and min(r.matches[0].score for r in results) > 0.97
    index = ProductIndex.open(tmp_path / "idx", model="lite0@64+lite1@96", runtime="onnx", precision="fp32")
    assert [r.matches[0].sku for r in index.query(photos, top_k=2)] == SKUS


@pytest.mark.parametrize("model,message", [
    ("lite0+lite2@448", "is an ensemble of 2 backbones, and training trains one: train a single backbone "
                        r"\(e.g. --model tf_efficientnet_lite2 --img-size 448\), or use the ensemble untrained"),
    ("lite2@448", "asks for 448 px but training crops at --img-size 224: give the size once, with "
                  "--model tf_efficientnet_lite2 --img-size 448"),
])
def test_training_refuses_an_ensemble_before_it_writes_anything(model, message, tmp_path):
    with pytest.raises(TrainingError, match=message):
        train(TrainConfig(train=str(tmp_path / "missing.csv"), out=str(tmp_path / "run"), model=model))
    assert not (tmp_path / "run").exists()
    result = CliRunner().invoke(cli, ["train", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "run"),
                                      "--model", model, "--recipe", "none"])  # auto would read the photos first
    assert result.exit_code == 1 and re.search(message, " ".join(result.output.split())), result.output
