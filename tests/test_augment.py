"""Customer-photo augmentation on generated photos: cut-out of plain backgrounds, the rendered
scene, the camera's degradations, no flips unless asked, reproducible from Python's seed."""

from __future__ import annotations

import random

import numpy as np
from PIL import Image

from conftest import product_image
from prodsearch.retrieval.augment import CustomerPhoto, camera, cut_out, plain_background


def studio_photo() -> Image.Image:
    """A product on a white studio background (as catalog photos are)."""
    img = Image.new("RGB", (200, 240), (252, 252, 252))
    img.paste(product_image(3, size=120).crop((15, 15, 105, 105)), (40, 60))
    return img


def test_plain_background_is_found_and_cut_out():
    img = studio_photo()
    assert plain_background(img) == (252, 252, 252)
    product = cut_out(img)
    assert product.mode == "RGBA" and abs(product.width - 90) <= 4 and abs(product.height - 90) <= 4
    alpha = np.asarray(product.getchannel("A"))
    assert alpha[alpha.shape[0] // 2, alpha.shape[1] // 2] == 255  # the product is opaque


def test_a_busy_photo_has_no_plain_background():
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    assert plain_background(noisy) is None and cut_out(noisy) is None
    assert cut_out(Image.new("RGB", (50, 50), "white")) is None  # nothing stands out


def test_customer_photo_is_reproducible_and_of_the_asked_size():
    augment = CustomerPhoto(size=128)
    random.seed(1)
    first = [np.asarray(augment(studio_photo())) for _ in range(3)]
    random.seed(1)
    again = [np.asarray(augment(studio_photo())) for _ in range(3)]
    assert all(a.shape == (128, 128, 3) for a in first)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], first[1])  # each call draws a new scene
    busy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 70, 3), dtype=np.uint8))
    assert augment(busy).size == (128, 128)  # a photo with its own surroundings: tilted only


def test_no_flip_unless_asked():
    """Mirrored text never appears on a package: a left-right asymmetric product keeps its side."""
    img = Image.new("RGB", (160, 160), "white")
    img.paste((200, 0, 0), (20, 40, 60, 120))  # red on the left
    img.paste((0, 0, 200), (60, 40, 140, 120))  # blue, wider, on the right

    def red_is_left(photo: Image.Image) -> bool:
        a = np.asarray(photo, dtype=np.float32)
        red = (a[..., 0] - a[..., 2] > 80).nonzero()[1]
        blue = (a[..., 2] - a[..., 0] > 80).nonzero()[1]
        return red.mean() < blue.mean()

    random.seed(3)
    assert all(red_is_left(CustomerPhoto(160)(img)) for _ in range(8))
    random.seed(3)
    assert not all(red_is_left(CustomerPhoto(160, flip=True)(img)) for _ in range(8))


def test_camera_keeps_the_size():
    img = product_image(7, size=96)
    for seed in range(10):
        out = camera(img, np.random.default_rng(seed))
        assert out.size == img.size and out.mode == "RGB"
