"""Every kind of bad input is indexed correctly or skipped with its reason; none aborts a run or
harms the index."""

import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from prodsearch.indexer import build_index
from prodsearch.indexer.info import index_info
from prodsearch.indexer.lifecycle import add_to_index
from prodsearch.retrieval import create_embedder

from conftest import product_image, write_folder_catalog


@pytest.fixture(scope="module")
def small_embedder():
    return create_embedder(img_size=64)


@pytest.fixture
def index(tmp_path, small_embedder):
    catalog = write_folder_catalog(tmp_path / "catalog", ["good"], per_sku=2)
    build_index(catalog, tmp_path / "idx", model=small_embedder, num_workers=0)
    return tmp_path / "idx"


def add_one(tmp_path, index, make):
    """Put one good photo and the bad file made by ``make(folder)`` in a new SKU folder and add it."""
    folder = tmp_path / "incoming" / "sku"
    folder.mkdir(parents=True)
    product_image(11).save(folder / "ok.jpg")
    make(folder)
    report = add_to_index(tmp_path / "incoming", index, num_workers=0)
    info = index_info(index)
    assert info.consistent, info.problems
    assert info.images == 2 + report.added
    return report, {os.path.basename(s.path): s.reason for s in report.skipped}


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_corrupt_jpeg(tmp_path, index):
    """Garbage where the compressed pixels should be: decoded as a damaged picture or refused."""
    def make(folder):
        data = bytearray((folder / "ok.jpg").read_bytes())
        start = data.index(b"\xff\xda") + 20  # after the start-of-scan header
        data[start:-2] = np.random.default_rng(0).integers(0, 256, len(data) - 2 - start, dtype=np.uint8).tobytes()
        (folder / "corrupt.jpg").write_bytes(bytes(data))
    report, skipped = add_one(tmp_path, index, make)
    assert report.added == 2 or skipped["corrupt.jpg"].startswith("corrupt or truncated image")


def test_truncated_jpeg(tmp_path, index):
    def make(folder):
        product_image(5, size=256).save(folder / "cut.jpg")
        data = (folder / "cut.jpg").read_bytes()
        (folder / "cut.jpg").write_bytes(data[: len(data) // 2])
    report, skipped = add_one(tmp_path, index, make)
    assert report.added == 1 and skipped["cut.jpg"].startswith("corrupt or truncated image")


def test_zero_byte_file(tmp_path, index):
    report, skipped = add_one(tmp_path, index, lambda f: (f / "empty.jpg").write_bytes(b""))
    assert report.added == 1 and skipped["empty.jpg"] == "empty file"


def test_non_image(tmp_path, index):
    report, skipped = add_one(tmp_path, index, lambda f: (f / "notes.png").write_text("price list"))
    assert report.added == 1 and skipped["notes.png"] == "not an image (unrecognised format)"


def test_decompression_bomb(tmp_path, index):
    """A 30000 x 30000 PNG header (900 megapixels) in a file of a few bytes."""
    def make(folder):
        header = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
        data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        (folder / "bomb.png").write_bytes(data + png_chunk(b"IEND", b""))
    report, skipped = add_one(tmp_path, index, make)
    assert report.added == 1 and skipped["bomb.png"].startswith("image too large")


@pytest.mark.parametrize("name,make", [
    ("cmyk.jpg", lambda p: product_image(6).convert("CMYK").save(p)),
    ("deep.png", lambda p: Image.fromarray((np.asarray(product_image(7).convert("L"), np.uint16) * 257)).save(p)),
    ("alpha.png", lambda p: product_image(8).convert("RGBA").save(p)),
    ("anim.gif", lambda p: product_image(9).save(p, save_all=True, append_images=[product_image(10)])),
    ("anim.webp", lambda p: product_image(9).save(p, save_all=True, append_images=[product_image(10)])),
    ("möbel ÄÖ 日本.jpg", lambda p: product_image(12).save(p)),
    ("my photo (1).jpg", lambda p: product_image(13).save(p)),
])
def test_unusual_but_valid_files_are_indexed(tmp_path, index, name, make):
    report, skipped = add_one(tmp_path, index, lambda folder: make(folder / name))
    assert report.added == 2 and not skipped


def test_symlink_outside_the_catalog_is_followed(tmp_path, index):
    product_image(14).save(tmp_path / "elsewhere.jpg")
    report, skipped = add_one(tmp_path, index, lambda f: (f / "link.jpg").symlink_to(tmp_path / "elsewhere.jpg"))
    assert report.added == 2 and not skipped


def test_symlink_inside_the_catalog_is_followed(tmp_path, index):
    report, skipped = add_one(tmp_path, index, lambda f: (f / "alias.jpg").symlink_to(f / "ok.jpg"))
    assert report.added == 1 and not skipped and len(report.duplicates) == 1  # same bytes as ok.jpg


def test_sku_folders_differing_only_in_case(tmp_path, index):
    def make(folder):
        twin = folder.parent / "SKU"
        twin.mkdir()
        product_image(15).save(twin / "x.jpg")
    report, skipped = add_one(tmp_path, index, make)
    assert report.added == 1 and report.new_skus == ["SKU"]
    assert skipped["ok.jpg"] == "SKU folder 'sku' differs from 'SKU' only in case; merge or rename one of them"


def test_unicode_sku_folder(tmp_path, index):
    folder = tmp_path / "incoming" / "Mjölk 3% ½ l"
    folder.mkdir(parents=True)
    product_image(16).save(folder / "front.jpg")
    report = add_to_index(tmp_path / "incoming", index, num_workers=0)
    assert report.new_skus == ["Mjölk 3% ½ l"]
    assert index_info(index).consistent
