"""The small, blurry photo condition: one function for the benchmark, train's held-out photos and augmentation."""

import numpy as np
from PIL import Image

from prodsearch.retrieval.degrade import SHORT_SIDE, Degrade, degrade, degraded_copy
from prodsearch.retrieval.images import load_image


def test_degrade_reduces_the_short_side_blurs_and_compresses(real_photos):
    img = load_image(real_photos[0])
    out = degrade(img, np.random.default_rng(0))
    assert SHORT_SIDE[0] <= min(out.size) <= SHORT_SIDE[1] + 1
    assert abs(out.width / out.height - img.width / img.height) < 0.02  # the shape is kept
    small = img.resize((64, 80))
    assert degrade(small, np.random.default_rng(0)).size == (64, 80)  # never enlarged
    # Blur and JPEG lose detail: the reduced photo differs from a plain resize of the original.
    plain = np.asarray(img.resize(out.size, Image.BILINEAR), dtype=np.float32)
    assert np.abs(np.asarray(out, dtype=np.float32) - plain).mean() > 1.0


def test_degraded_copies_are_reproducible_and_reused(real_photos, tmp_path):
    a = degraded_copy(real_photos[1], tmp_path / "a.jpg", seed=7)
    b = degraded_copy(real_photos[1], tmp_path / "b.jpg", seed=7)
    c = degraded_copy(real_photos[1], tmp_path / "c.jpg", seed=8)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    a.write_bytes(b"kept")
    assert degraded_copy(real_photos[1], a, seed=7).read_bytes() == b"kept"


def test_the_augmentation_draws_from_python_random(real_photos):
    import random

    img = load_image(real_photos[2])
    random.seed(3)
    first = np.asarray(Degrade()(img))
    random.seed(3)
    assert np.array_equal(first, np.asarray(Degrade()(img)))
