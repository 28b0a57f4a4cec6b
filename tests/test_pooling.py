"""Object-focused pooling (CroW, SCDA): the vectorised poolings against plain loops over positions
and channels, the embedder option, its ONNX export, and the manifest identity of avg-pooled models
staying what it was."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from prodsearch.choices import POOLINGS
from prodsearch.errors import ModelMismatchError, UnknownModelError
from prodsearch.indexer import ProductIndex, build_index
from prodsearch.indexer.manifest import read_manifest
from prodsearch.retrieval import EmbedderConfig, create_embedder, create_encoder
from prodsearch.retrieval.checkpoint import load_embedder, save_checkpoint
from prodsearch.retrieval.pooling import EPS, WEIGHTED_POOLINGS, crow_pool, scda_pool

SMALL_MODEL = "tf_efficientnet_lite0@96"  # a 3 x 3 feature map: enough positions to weight; tests stay fast


def feature_map(seed: int = 0) -> torch.Tensor:
    """A ReLU-like map (about half zeros), one channel all zero, as a backbone's last map is."""
    x = torch.relu(torch.randn(2, 5, 3, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    x[:, 3] = 0
    return x


def crow_loop(x: torch.Tensor) -> torch.Tensor:
    """CroW by the paper's formulas, one position and one channel at a time."""
    n, k, h, w = x.shape
    out = torch.zeros(n, k, dtype=x.dtype)
    for b in range(n):
        summed = [[max(0.0, sum(float(x[b, c, i, j]) for c in range(k))) for j in range(w)] for i in range(h)]
        norm = math.sqrt(sum(v * v for row in summed for v in row))
        weight = [[math.sqrt(v / (norm + EPS)) for v in row] for row in summed]
        share = [sum(float(x[b, c, i, j]) > 0 for i in range(h) for j in range(w)) / (h * w) for c in range(k)]
        for c in range(k):
            pooled = sum(weight[i][j] * float(x[b, c, i, j]) for i in range(h) for j in range(w))
            out[b, c] = pooled * math.log((sum(share) + k * EPS) / (share[c] + EPS))
    return out


def scda_loop(x: torch.Tensor) -> torch.Tensor:
    """The mean descriptor over the positions whose summed activation is above the map's mean."""
    n, k, h, w = x.shape
    out = torch.zeros(n, k, dtype=x.dtype)
    for b in range(n):
        summed = {(i, j): sum(float(x[b, c, i, j]) for c in range(k)) for i in range(h) for j in range(w)}
        mean = sum(summed.values()) / len(summed)
        kept = [p for p, v in summed.items() if v > mean]
        for c in range(k):
            out[b, c] = sum(float(x[b, c, i, j]) for i, j in kept) / len(kept)
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_crow_equals_the_papers_formulas_looped(seed):
    x = feature_map(seed)
    torch.testing.assert_close(crow_pool(x), crow_loop(x), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_scda_equals_a_loop_over_the_kept_positions(seed):
    x = feature_map(seed)
    torch.testing.assert_close(scda_pool(x), scda_loop(x), rtol=1e-9, atol=1e-12)


def test_weighted_poolings_stay_finite_on_an_all_zero_map():
    zero = torch.zeros(1, 4, 2, 2)
    for pool in WEIGHTED_POOLINGS.values():
        out = pool(zero)
        assert out.shape == (1, 4) and torch.isfinite(out).all()


def test_crow_weights_the_strongly_firing_object_over_the_background():
    """A map whose 'object' position fires in channel 0 and the many background positions weakly in
    channel 1: average pooling lets the background dominate, CroW lets the object."""
    x = torch.zeros(1, 2, 4, 4)
    x[0, 1] = 0.2  # background everywhere
    x[0, 1, 0, 0] = 0
    x[0, 0, 0, 0] = 3.0  # the object, at one position
    avg = x.mean(dim=(2, 3))[0]
    crow = crow_pool(x)[0]
    assert avg[1] > avg[0]
    assert crow[0] > crow[1]


def test_every_pooling_choice_is_implemented():
    assert set(WEIGHTED_POOLINGS) | {"avg"} == set(POOLINGS)


def test_avg_pooled_configs_keep_their_identity_and_others_record_it(embedder):
    old_keys = {"name", "weights", "embed_dim", "data_config", "head"}
    assert set(embedder.config.identity()) == old_keys  # manifests written before poolings still match
    assert embedder.config.label == embedder.config.name
    crow = create_embedder(SMALL_MODEL, pooling="crow")
    assert crow.config.identity()["pooling"] == "crow"
    assert crow.config.label == "tf_efficientnet_lite0"
    assert EmbedderConfig.from_dict(crow.config.to_dict()).identity() == crow.config.identity()
    assert EmbedderConfig.from_dict(embedder.config.to_dict()).pooling == "avg"


def test_unknown_pooling_is_refused_with_the_choices():
    with pytest.raises(UnknownModelError, match="crow"):
        create_embedder(SMALL_MODEL, pooling="max")


@pytest.mark.parametrize("pooling", ["crow", "scda"])
def test_pooled_embedder_exports_to_onnx_with_the_same_embeddings(pooling):
    embedder = create_embedder(SMALL_MODEL, pooling=pooling)
    batch = np.random.default_rng(0).standard_normal((3, 3, 96, 96), dtype=np.float32)
    with torch.inference_mode():
        expected = embedder(torch.from_numpy(batch)).numpy()
        features = embedder.forward_features(torch.from_numpy(batch))
        avg = torch.nn.functional.normalize(features.mean(dim=(2, 3)), dim=-1).numpy()
    encoder = create_encoder(embedder, runtime="onnx")
    assert encoder.config.pooling == pooling  # the ONNX file's metadata carries it
    got = encoder.encode(batch)
    assert np.abs(got - expected).max() < 1e-4
    assert (expected * avg).sum(axis=1).max() < 0.999  # it is another pooling than the average


def test_a_checkpoint_keeps_its_pooling(tmp_path):
    embedder = create_embedder(SMALL_MODEL, pooling="crow")
    path = save_checkpoint(tmp_path / "crow.pt", embedder)
    loaded = load_embedder(path)
    assert loaded.config.pooling == "crow"
    assert create_embedder(path).config.pooling == "crow"
    with pytest.raises(UnknownModelError, match="keeps the pooling"):
        create_embedder(path, pooling="scda")


def test_an_index_built_with_crow_records_it_and_queries_with_it(folder_catalog, tmp_path):
    """The manifest keeps the pooling: the stored ONNX model and a torch rebuild from the manifest
    answer alike, and the same backbone with average pooling is refused as another model."""
    idx = tmp_path / "idx"
    build_index(folder_catalog, idx, model=create_embedder(SMALL_MODEL, pooling="crow"), precision="fp32",
                num_workers=0)
    assert read_manifest(idx).model.pooling == "crow"
    photo = min(folder_catalog.glob("sku-2/*.jpg"))
    onnx_top = ProductIndex.open(idx, precision="fp32").query([photo], top_k=1)[0].matches[0]
    torch_top = ProductIndex.open(idx, runtime="torch").query([photo], top_k=1)[0].matches[0]
    assert onnx_top.sku == torch_top.sku == "sku-2"
    assert onnx_top.score == pytest.approx(torch_top.score, abs=1e-3)
    with pytest.raises(ModelMismatchError, match="pooling"):
        ProductIndex.open(idx, model=SMALL_MODEL)
