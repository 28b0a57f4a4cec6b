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
from prodsearch.catalog.importers.base import Format, Row
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
    with open(dataset / "classes.csv", newline="", encoding="utf-8") as f:
        for row in csv.reader(f):
            if not row or not row[1].strip().isdigit():
                continue
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
    rows = []
    for line in (dataset / f"{name}.txt").read_text(encoding="utf-8").splitlines():
        if line.strip():
            path, fine, _coarse = (part.strip() for part in line.split(","))
            if int(fine) in classes:
                rows.append({**classes[int(fine)], "image": dataset / path})
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
