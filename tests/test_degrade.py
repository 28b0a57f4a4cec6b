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


def test_train_augment_degrade_makes_about_half_the_photos_small_first(real_photos):
    import random

    import torch
    from torchvision import transforms

    from prodsearch.retrieval.train_data import photo_augmentation

    # Without the colour jitter (the last step), the standard path always gives the same photo.
    degrading = transforms.Compose(photo_augmentation(256, "degrade", flip=False).transforms[:-1])
    plain = transforms.Compose(photo_augmentation(256, "standard", flip=False).transforms[:-1])
    img = load_image(real_photos[3])
    random.seed(0)
    torch.manual_seed(0)

    def detail(x):  # mean absolute difference between neighbouring pixels
        return float(np.abs(np.diff(np.asarray(x, dtype=np.float32), axis=1)).mean())

    sharp = detail(plain(img))
    outputs = [degrading(img) for _ in range(40)]
    assert all(o.size == plain(img).size for o in outputs)  # back at the training size
    changed = [detail(o) for o in outputs if abs(detail(o) - sharp) > 1e-6]
    assert 8 <= len(changed) <= 32 and max(changed) < 0.9 * sharp  # about half, each with less detail
