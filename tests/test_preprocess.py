"""The numpy preprocessing (the ONNX runtime's, torch-free) equals timm's eval transform."""

import numpy as np
import pytest
import timm.data
from PIL import Image

from prodsearch.retrieval.images import load_image
from prodsearch.retrieval.preprocess import Preprocess, decode_min_side

from conftest import product_image

LITE = {"interpolation": "bicubic", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
IMAGENET = {"interpolation": "bilinear", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
CONFIGS = [
    {**LITE, "input_size": (3, 224, 224), "crop_pct": 0.875, "crop_mode": "center"},  # lite0
    {**LITE, "input_size": (3, 260, 260), "crop_pct": 0.89, "crop_mode": "center"},
    {**IMAGENET, "input_size": (3, 448, 448), "crop_pct": 1.0, "crop_mode": "center"},
    {**LITE, "input_size": (3, 240, 240), "crop_pct": 0.9, "crop_mode": "squash"},
    {**LITE, "input_size": (3, 224, 224), "crop_pct": 1.15, "crop_mode": "center"},  # crops past the edge: padded
]


def timm_array(config: dict, img: Image.Image) -> np.ndarray:
    return timm.data.create_transform(**config, is_training=False)(img).numpy()


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c['input_size'][-1]}-{c['crop_mode']}-{c['crop_pct']}")
def test_equals_timm_on_real_photos(config, real_photos):
    preprocess = Preprocess(config)
    for path in real_photos:
        img = load_image(path, min_side=decode_min_side(config))
        ours = preprocess(img)
        assert ours.shape == preprocess.input_shape and ours.dtype == np.float32
        assert np.abs(ours - timm_array(config, img)).max() <= 1 / 255, path


@pytest.mark.parametrize("size", [(96, 96), (301, 97), (97, 301), (640, 480), (17, 1000), (224, 224)])
@pytest.mark.parametrize("config", CONFIGS[:1] + CONFIGS[3:], ids=["lite0", "squash", "padded"])
def test_equals_timm_on_any_shape(config, size):
    img = product_image(size[0] + size[1], size=256).resize(size)
    assert np.abs(Preprocess(config)(img) - timm_array(config, img)).max() <= 1e-6


def test_unsupported_preprocessing_is_refused():
    with pytest.raises(ValueError, match="unsupported preprocessing"):
        Preprocess({**CONFIGS[0], "crop_mode": "border"})
    with pytest.raises(ValueError, match="square"):
        Preprocess({**CONFIGS[0], "input_size": (3, 224, 256)})
