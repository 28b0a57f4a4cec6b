"""Grocery Store (Klasson et al., WACV 2019): ``classes.csv`` (class name and id, coarse class,
iconic image path) and ``train.txt`` / ``val.txt`` / ``test.txt`` (``path, class id, coarse id``).

The ``iconic`` split is one clean catalog photo per SKU. The category tree has two levels above the
SKU: the top folder (Fruit, Vegetables, Packages) and the coarse class (``Fruit/Apple``).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from prodsearch.errors import CatalogError
from prodsearch.catalog.importers.base import Format, Row, malformed
from prodsearch.catalog.listing import Skipped

SPLITS = ("iconic", "train", "val", "test")


def dataset_dir(root: Path) -> Path:
    for candidate in (root, root / "dataset"):
        if (candidate / "classes.csv").is_file():
            return candidate
    raise CatalogError(f"{root} is not the Grocery Store dataset (no dataset/classes.csv)")


def read_classes(dataset: Path) -> dict[int, dict]:
    """Fine class id -> sku, name, category (top folder / coarse class: ``Fruit/Apple``,
    ``Fruit/Lime``, ``Packages/Juice``), iconic image path."""
    out = {}
    path = dataset / "classes.csv"
    with open(path, newline="", encoding="utf-8") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            if len(row) < 2 or not row[1].strip().isdigit():
                continue  # the header, blank lines
            if len(row) < 5 or len(Path(row[4].strip().lstrip("/")).parts) < 2:
                raise malformed(path, line, "expected name, class id, coarse name, coarse id, iconic image path")
            iconic = Path(row[4].strip().lstrip("/"))
            out[int(row[1])] = {
                "sku": row[0].strip(),
                "name": row[0].strip().replace("-", " "),
                "category": f"{iconic.parts[1]}/{row[2].strip()}",
                "iconic": dataset / iconic,
            }
    return out


def read_split(dataset: Path, name: str, classes: dict[int, dict]) -> list[dict]:
    """The photos of one split (``iconic`` included) whose class is in ``classes``."""
    if name == "iconic":
        return [{**c, "image": c["iconic"]} for c in classes.values()]
    listing = dataset / f"{name}.txt"
    if not listing.is_file():
        raise CatalogError(f"{dataset} has no {listing.name}; expected {FORMAT.summary}")
    rows = []
    for number, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = [part.strip() for part in line.split(",")]
        if len(parts) != 3 or not parts[1].isdigit():
            raise malformed(listing, number, "expected 'path, class id, coarse class id'")
        if int(parts[1]) in classes:
            rows.append({**classes[int(parts[1])], "image": dataset / parts[0]})
    return rows


def rows(source: Path, splits: tuple[str, ...], out: Path) -> Iterator[Row | Skipped]:
    dataset = dataset_dir(source)
    classes = read_classes(dataset)
    for split in splits:
        for r in read_split(dataset, split, classes):
            if r["image"].is_file():
                yield Row(r["image"], r["sku"], r["name"], r["category"])
            else:
                yield Skipped(str(r["image"]), "file not found")


FORMAT = Format("grocery-store", rows, splits=SPLITS, default_splits=("iconic", "train"),
                summary="classes.csv with train.txt, val.txt and test.txt (in the folder or its dataset/)")
