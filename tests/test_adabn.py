"""AdaBN: the backbone's BatchNorm statistics re-estimated on unlabelled photos move to those
photos' statistics, every other weight stays, the original is untouched, and the adapted model
has its own (checkpoint) identity that survives a save and load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import product_image
from PIL import Image

from prodsearch.retrieval import create_embedder, create_encoder
from prodsearch.retrieval.adabn import AdaptationError, adapt_batchnorm
from prodsearch.retrieval.checkpoint import (
    load_embedder,
    save_checkpoint,
    weights_digest,
)
from prodsearch.retrieval.embedding import preprocessed

MODEL = "tf_efficientnet_lite0@64"
STATS = ("running_mean", "running_var", "num_batches_tracked")


@pytest.fixture(scope="module")
def small_embedder():
    return create_embedder(MODEL)


@pytest.fixture
def dark_photos(tmp_path):
    """Dim, low-contrast photos: statistics far from ImageNet's."""
    paths = []
    for seed in range(8):
        img = Image.fromarray((np.asarray(product_image(seed, 80), dtype=np.float32) * 0.3).astype(np.uint8))
        path = tmp_path / f"dark{seed}.jpg"
        img.save(path, quality=90)
        paths.append(path)
    return paths


def test_statistics_move_to_the_photos_and_nothing_else_changes(small_embedder, dark_photos):
    before = weights_digest(small_embedder.state_dict())
    adapted = adapt_batchnorm(small_embedder, dark_photos, batch_size=4)  # two equal batches
    assert weights_digest(small_embedder.state_dict()) == before  # the original is left as it was
    assert not adapted.training and not any(m.training for m in adapted.modules())

    # The first BatchNorm sees the stem convolution's output: its running mean is now exactly the
    # photos' per-channel mean (the average of two equal batches' means), and its variance closer.
    inputs = torch.from_numpy(preprocessed(dark_photos, small_embedder.config.data_config))
    with torch.no_grad():
        stem = small_embedder.backbone.conv_stem(inputs)
    mean, var = stem.mean(dim=(0, 2, 3)), stem.var(dim=(0, 2, 3))
    old, new = small_embedder.backbone.bn1, adapted.backbone.bn1
    torch.testing.assert_close(new.running_mean, mean, rtol=1e-4, atol=1e-5)
    assert (new.running_var - var).abs().mean() < (old.running_var - var).abs().mean() / 2
    assert new.momentum == old.momentum  # later training updates them as before

    original, changed = small_embedder.state_dict(), adapted.state_dict()
    assert original.keys() == changed.keys()
    for key, value in original.items():
        if key.endswith(STATS):
            if key.endswith("running_mean"):
                assert not torch.equal(value, changed[key]), key  # every BatchNorm layer was re-estimated
        else:
            assert torch.equal(value, changed[key]), key  # weights, biases and the head as they were


def test_the_adapted_model_has_its_own_identity_kept_by_a_checkpoint(small_embedder, dark_photos, tmp_path):
    adapted = adapt_batchnorm(small_embedder, dark_photos)
    assert adapted.config.weights == f"checkpoint:{weights_digest(adapted.state_dict())}"
    assert adapted.config.weights != small_embedder.config.weights
    assert {k: v for k, v in adapted.config.identity().items() if k != "weights"} == \
        {k: v for k, v in small_embedder.config.identity().items() if k != "weights"}
    loaded = load_embedder(save_checkpoint(tmp_path / "adabn.pt", adapted))
    assert loaded.config.identity() == adapted.config.identity()  # an index built on either matches both
    batch = np.random.default_rng(0).standard_normal((2, 3, 64, 64), dtype=np.float32)
    with torch.inference_mode():
        expected = adapted(torch.from_numpy(batch)).numpy()
        np.testing.assert_allclose(loaded(torch.from_numpy(batch)).numpy(), expected, atol=1e-6)
    encoder = create_encoder(adapted, runtime="onnx")
    assert encoder.config.identity() == adapted.config.identity()
    assert np.abs(encoder.encode(batch) - expected).max() < 1e-4


def test_no_readable_photo_is_an_error_that_says_what_to_give(small_embedder, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a photo")
    with pytest.raises(AdaptationError, match="customer photos"):
        adapt_batchnorm(small_embedder, [bad])
