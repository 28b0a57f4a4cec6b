"""Cdiscount (Kaggle 2017): BSON files of one document per product (``_id``, ``category_id``,
``imgs: [{picture: <JPEG bytes>}]`` with 1-4 pictures) and ``category_names.csv``
(``category_id,category_level1,category_level2,category_level3``).

The BSON is streamed document by document (the real training file is 58 GB) and each picture is
written, unchanged, to ``<manifest>-images/<category_id>/<_id>-<n>.jpg`` beside the manifest:
``index``, ``train`` and ``eval`` then read ordinary files, decoded in parallel workers, and a
picture already extracted with the same size is not written again, so an interrupted import can
simply be re-run. Each product is a SKU (``sku = product = _id``) with the 3-level category path.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from prodsearch.errors import CatalogError
from prodsearch.catalog.importers.base import Format, Row, malformed
from prodsearch.catalog.listing import Skipped

CATEGORY_NAMES = "category_names.csv"
BSON_FILES = {"train": ("train.bson", "train_example.bson"), "test": ("test.bson",)}


def read_categories(path: Path) -> dict[int, str]:
    """category_id -> "level1/level2/level3"; a '/' inside a level's name becomes '-' so the
    path keeps exactly three levels."""
    out = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        needed = {"category_id", "category_level1", "category_level2", "category_level3"}
        if not needed <= set(reader.fieldnames or []):
            raise CatalogError(f"{path} has header {','.join(reader.fieldnames or [])}; expected {','.join(sorted(needed))}")
        for row in reader:
            category_id = (row["category_id"] or "").strip()
            if not category_id.isdigit():
                raise malformed(path, reader.line_num, f"category_id {category_id!r} is not a whole number")
            levels = ((row[f"category_level{i}"] or "").strip().replace("/", "-") for i in (1, 2, 3))
            out[int(category_id)] = "/".join(levels)
    return out


def _bson_file(source: Path, split: str) -> Path:
    if source.is_file():
        return source
    for name in BSON_FILES[split]:
        if (source / name).is_file():
            return source / name
    raise CatalogError(f"{source} has none of {', '.join(BSON_FILES[split])}; expected {FORMAT.summary}")


def _extract(picture: bytes, path: Path) -> None:
    if path.is_file() and path.stat().st_size == len(picture):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(picture)
    partial.replace(path)


def rows(source: Path, splits: tuple[str, ...], out: Path) -> Iterator[Row | Skipped]:
    import bson  # pymongo's; imported here so the rest of prodsearch does not need it

    root = source if source.is_dir() else source.parent
    names_path = root / CATEGORY_NAMES
    categories = read_categories(names_path) if names_path.is_file() else {}
    images = out.parent / f"{out.stem}-images"
    for path in dict.fromkeys(_bson_file(source, split) for split in splits):  # one file given: read once
        with open(path, "rb") as f:
            try:
                for doc in bson.decode_file_iter(f):
                    yield from _product_rows(doc, categories, images, path)
            except bson.errors.BSONError as exc:  # a truncated or damaged file: keep what was read
                yield Skipped(str(path), f"unreadable BSON after offset {f.tell()}: {exc}")


def _product_rows(doc: dict, categories: dict[int, str], images: Path, path: Path) -> Iterator[Row | Skipped]:
    product = str(doc.get("_id", ""))
    pictures = [img.get("picture") for img in doc.get("imgs") or []]
    if not product or not pictures:
        yield Skipped(f"{path}: product {product or '?'}", "document without _id or pictures")
        return
    category_id = doc.get("category_id")
    category = categories.get(category_id) if isinstance(category_id, int) else None
    if category_id is not None and category is None:
        category = str(category_id)  # no category_names.csv entry: keep the id as a one-level path
    folder = images / (str(category_id) if category_id is not None else "unlabelled")
    for n, picture in enumerate(pictures):
        if not isinstance(picture, bytes) or not picture:
            yield Skipped(f"{path}: product {product} picture {n}", "empty or missing picture")
            continue
        image = folder / f"{product}-{n}.jpg"
        _extract(picture, image)
        yield Row(image, product, category=category, product=product)


FORMAT = Format("cdiscount", rows, splits=("train", "test"), default_splits=("train",),
                summary="a folder with train.bson (or train_example.bson, test.bson) of products "
                        "{_id, category_id, imgs: [{picture}]} and category_names.csv, or one .bson file")
