"""Views that never enlarge a small photo's crops (``upsample_crops=False``): a photo whose crops
would be smaller than the model's input is its whole self as every view; larger photos, and the
default, keep their crops."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import product_image

from prodsearch.retrieval import create_embedder, embed_files, embed_pil
from prodsearch.retrieval.preprocess import Preprocess
from prodsearch.retrieval.torch_encoder import TorchEncoder
from prodsearch.retrieval.views import crop_views, crops_smaller, view_inputs

INPUT = 64  # px, the model's input in these tests
SMALL, LARGE = 80, 100  # crops of 56 px (below the input) and of 70 px (above it)
VIEWS = 4


@pytest.fixture(scope="module")
def encoder():
    return TorchEncoder(create_embedder(f"tf_efficientnet_lite0@{INPUT}"), "cpu", "fp32")


def test_crops_smaller_than_the_model_input_are_the_whole_photo():
    small, large = product_image(0, SMALL), product_image(0, LARGE)
    assert crops_smaller(small.size, (INPUT, INPUT)) and not crops_smaller(large.size, (INPUT, INPUT))
    assert crops_smaller((200, 80), (INPUT, INPUT))  # one short side is enough
    assert crop_views(small, VIEWS, (INPUT, INPUT)) == [small] * VIEWS
    assert [v.size for v in crop_views(large, VIEWS, (INPUT, INPUT))][1:] == [(70, 70)] * (VIEWS - 1)
    assert [v.size for v in crop_views(small, VIEWS)][1:] == [(56, 56)] * (VIEWS - 1)  # the default crops
    assert crop_views(small, 1, (INPUT, INPUT)) == [small]


def test_view_inputs_of_a_small_photo_are_its_own_input_n_times(encoder):
    preprocess = Preprocess(encoder.config.data_config)
    small, large = product_image(1, SMALL), product_image(1, LARGE)
    own = preprocess(small)
    kept = view_inputs(small, VIEWS, preprocess, upsample_crops=False)
    assert kept.shape == (VIEWS, 3, INPUT, INPUT) and all(np.array_equal(x, own) for x in kept)
    cropped = view_inputs(small, VIEWS, preprocess)  # default: crops, enlarged
    assert not np.array_equal(cropped[1], own)
    np.testing.assert_array_equal(view_inputs(large, VIEWS, preprocess, upsample_crops=False),
                                  view_inputs(large, VIEWS, preprocess))


def test_embed_files_both_ways(encoder, tmp_path):
    paths = []
    for seed, side in enumerate((SMALL, LARGE)):
        product_image(seed, side).save(tmp_path / f"p{seed}.png")
        paths.append(tmp_path / f"p{seed}.png")
    one = embed_files(encoder, paths, num_workers=0).vectors
    default = embed_files(encoder, paths, num_workers=0, views=VIEWS).vectors
    whole = embed_files(encoder, paths, num_workers=0, views=VIEWS, upsample_crops=False).vectors
    np.testing.assert_allclose(whole[0], one[0], atol=1e-5)  # the small photo: its views are itself
    assert np.abs(default[0] - one[0]).max() > 1e-3  # by default its crops are enlarged and fused
    np.testing.assert_allclose(whole[1], default[1], atol=1e-6)  # the large photo keeps its crops
    images = [product_image(0, SMALL)]
    np.testing.assert_allclose(embed_pil(encoder, images, VIEWS, upsample_crops=False), one[:1], atol=1e-5)
