"""``--augment degrade`` (the standard augmentation, half the photos first made small and blurry)
draws reproducibly from the draw's seed, as every training augmentation does, and trains."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from prodsearch.choices import AUGMENTATIONS
from prodsearch.retrieval.sampling import seeded
from prodsearch.retrieval.train_data import photo_augmentation, train_transform
from prodsearch.retrieval.training import train
from prodsearch.synthetic import write_synthetic_dataset
from prodsearch.train_config import TrainConfig

DRAWS = 20


def checkerboard() -> Image.Image:
    """A photo with fine detail (6 px squares), which degrading changes visibly."""
    y, x = np.mgrid[:600, :800]
    return Image.fromarray(((x // 6 + y // 6) % 2 * 255).astype(np.uint8)).convert("RGB")


def drawn(augment: str, seeds: range) -> list[bytes]:
    transform, img = photo_augmentation(256, augment, crop=224), checkerboard()
    out = []
    for seed in seeds:
        with seeded(seed):
            out.append(transform(img).tobytes())
    return out


def test_degrade_draws_reproducibly_from_the_draw_seed():
    """Training's draws are seeded per (photo, draw) (:func:`seeded`): the same seeds give the same
    photos, and every seed its own (about half of them degraded: tests/test_degrade.py)."""
    first = drawn("degrade", range(DRAWS))
    assert first == drawn("degrade", range(DRAWS))
    assert len(set(first)) == DRAWS
    assert first != drawn("standard", range(DRAWS))


def test_degrade_is_a_train_option():
    assert "degrade" in AUGMENTATIONS
    help_text = next(f for f in TrainConfig.__dataclass_fields__.values() if f.name == "augment").metadata["help"]
    assert "degrade" in help_text
    transform = train_transform(64, 72, (0.5,) * 3, (0.5,) * 3, augment="degrade")
    with seeded(0):
        assert tuple(transform(checkerboard()).shape) == (3, 64, 64)
    with pytest.raises(ValueError, match="degrade"):
        photo_augmentation(64, "blurry")


def test_a_run_trains_with_it(tmp_path):
    """One epoch of whole-network training on a tiny generated shop, photos decoded in the run."""
    shop = write_synthetic_dataset(tmp_path / "shop", n_skus=4, snapshots_per_sku=2, size=64)
    result = train(TrainConfig(train=str(shop.queries_csv), out=str(tmp_path / "run"), embed_dim=16, img_size=64,
                               resize=72, epochs=1, batch_size=8, accumulate=1, m_per_class=2, frozen_stages=5,
                               workers=0, device="cpu", augment="degrade"))
    assert result.history and math.isfinite(result.history[0].loss)
