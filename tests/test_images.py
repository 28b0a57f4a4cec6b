"""Photos in every shape a shop or a phone produces them."""

import re

import numpy as np
import pytest
from PIL import Image

from prodsearch.retrieval.images import ImageLoadError, load_image

from conftest import product_image


def two_halves(w=60, h=40) -> Image.Image:
    img = Image.new("RGB", (w, h), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, w // 2, h))  # left half red
    return img


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: rotate 90 degrees clockwise to view
    two_halves().save(tmp_path / "phone.jpg", exif=exif, quality=95)
    img = load_image(tmp_path / "phone.jpg")
    assert img.size == (40, 60)
    top, bottom = np.asarray(img)[5, 20], np.asarray(img)[55, 20]
    assert top[0] > 200 and top[2] < 60  # the red left half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "LA", "1"])
def test_any_mode_becomes_rgb(tmp_path, mode):
    src = product_image(7).convert(mode)
    path = tmp_path / ("x.jpg" if mode in ("L", "CMYK", "1") else "x.png")
    src.save(path)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == src.size


def test_sixteen_bit_keeps_its_brightness(tmp_path):
    Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(tmp_path / "deep.png")
    img = load_image(tmp_path / "deep.png")
    assert img.mode == "RGB"
    assert np.asarray(img)[0, 0].tolist() == [156, 156, 156]  # 40000 / 65535 * 255, not clipped to 255


def test_transparency_is_flattened_on_white(tmp_path):
    img = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    img.paste((0, 0, 255, 255), (0, 0, 5, 10))
    img.save(tmp_path / "cutout.png")
    pixels = np.asarray(load_image(tmp_path / "cutout.png"))
    assert pixels[5, 8].tolist() == [255, 255, 255]
    assert pixels[5, 1].tolist() == [0, 0, 255]


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert load_image(tmp_path / "anim.gif").getpixel((8, 8))[0] > 200


def test_large_jpeg_decodes_at_reduced_size(tmp_path):
    product_image(1, size=1024).save(tmp_path / "big.jpg")
    assert min(load_image(tmp_path / "big.jpg", min_side=256).size) >= 256
    assert load_image(tmp_path / "big.jpg", min_side=256).size[0] < 1024


@pytest.mark.parametrize("content,reason", [
    (b"", "empty file"),
    (b"this is a text file, not a photo", "not an image (unrecognised format)"),
])
def test_non_images_are_refused_with_a_reason(tmp_path, content, reason):
    path = tmp_path / "photo.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageLoadError, match="^" + re.escape(reason)):
        load_image(path)


def test_truncated_jpeg_is_refused(tmp_path):
    product_image(1, size=256).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="^corrupt or truncated image"):
        load_image(tmp_path / "cut.jpg")


def test_missing_file(tmp_path):
    with pytest.raises(ImageLoadError, match="^file not found$"):
        load_image(tmp_path / "nope.jpg")


@pytest.mark.parametrize("limit", [6000, 3000])  # a warning above the limit, an error above twice it
def test_decompression_bomb_is_refused(tmp_path, monkeypatch, limit):
    product_image(1, size=100).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(ImageLoadError, match="^image too large"):
        load_image(tmp_path / "bomb.png")


def test_loading_from_threads_leaves_the_warning_filters_alone(tmp_path, monkeypatch):
    """The pixel limit is checked explicitly: no thread changes the process-wide warning filters."""
    import threading
    import warnings

    product_image(1, size=100).save(tmp_path / "bomb.png")
    product_image(2, size=60).save(tmp_path / "ok.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    before = list(warnings.filters)
    outcomes = []

    def load(name):
        for _ in range(20):
            try:
                outcomes.append(load_image(tmp_path / name).size)
            except ImageLoadError as exc:
                outcomes.append(str(exc))

    threads = [threading.Thread(target=load, args=(name,)) for name in ("bomb.png", "ok.png") * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert warnings.filters == before
    assert outcomes.count((60, 60)) == 80
    assert outcomes.count("image too large: 100 x 100 = 10000 pixels, more than the 5000 a photo may have") == 80


def test_library_warnings_are_logged_as_one_line(caplog):
    """Pillow's and PyTorch's warnings reach the log (named after the library), not raw stderr."""
    import warnings

    from prodsearch.cli.app import log_warning

    with warnings.catch_warnings():
        warnings.showwarning = log_warning
        warnings.simplefilter("always")
        warnings.warn_explicit("Corrupt EXIF data.  Expecting to read 12 bytes but only got 6.", UserWarning,
                               "/venv/site-packages/PIL/TiffImagePlugin.py", 900)
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("warnings.TiffImagePlugin", "WARNING", "UserWarning: Corrupt EXIF data.  Expecting to read 12 bytes but only got 6.")]
