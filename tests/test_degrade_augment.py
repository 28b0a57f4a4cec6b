"""``--augment degrade``: the standard augmentation, half the photos first made small and blurry;
reproducible from the draw's seed, as every training augmentation is."""

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
    """Fine detail (6 px squares) that the standard resize keeps and a small blurry copy loses."""
    y, x = np.mgrid[:600, :800]
    return Image.fromarray(((x // 6 + y // 6) % 2 * 255).astype(np.uint8)).convert("RGB")


def sharpness(img: Image.Image) -> float:
    return float(np.abs(np.diff(np.asarray(img.convert("L"), dtype=np.float32), axis=1)).mean())


def drawn(augment: str, seeds: range) -> list[Image.Image]:
    transform, img = photo_augmentation(256, augment, crop=224), checkerboard()
    out = []
    for seed in seeds:
        with seeded(seed):
            out.append(transform(img))
    return out


def test_degrade_is_reproducible_and_degrades_about_half_the_draws():
    first, again = drawn("degrade", range(DRAWS)), drawn("degrade", range(DRAWS))
    assert all(a.tobytes() == b.tobytes() for a, b in zip(first, again))
    assert all(img.size == (224, 224) for img in first)  # resized back up and cropped as standard
    assert len({img.tobytes() for img in first}) == DRAWS
    standard = [sharpness(img) for img in drawn("standard", range(DRAWS))]
    degraded = [sharpness(img) for img in first]
    assert min(standard) > 20  # the standard augmentation keeps the detail
    blurred = sum(s < 20 for s in degraded)
    assert 4 <= blurred <= DRAWS - 4, degraded  # p = 0.5: the rest keep it


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
