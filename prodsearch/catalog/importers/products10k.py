"""Products-10K (Bai et al., 2020): ``train/`` and ``test/`` image folders with ``train.csv``
(``name,class,group``: file, SKU class id, group id) and ``test_kaggletest.csv``
(``name,class,usage``). The group is the coarse category; test rows take their class's group from
``train.csv``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from prodsearch.errors import CatalogError
from prodsearch.catalog.importers.base import Format, Row, malformed
from prodsearch.catalog.listing import Skipped

LISTS = {"train": "train.csv", "test": "test_kaggletest.csv"}


def _read(path: Path, needed: set[str]) -> Iterator[tuple[int, dict]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        try:
            header = {h.strip() for h in reader.fieldnames or []}
            if not needed <= header:
                raise CatalogError(f"{path} has header {','.join(reader.fieldnames or [])}; "
                                   f"expected {','.join(sorted(needed))}")
            for row in reader:
                yield reader.line_num, {k.strip(): (v or "").strip() for k, v in row.items() if isinstance(k, str)}
        except csv.Error as exc:
            raise malformed(path, reader.line_num + 1, f"a CSV line ({exc})") from None
        except UnicodeDecodeError as exc:
            raise CatalogError(f"{path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                               "is this the right dataset and format?") from None


def _groups(root: Path) -> dict[str, str]:
    """Class id -> group id, from the training list (the test list has no groups)."""
    path = root / LISTS["train"]
    return {row["class"]: row["group"] for _, row in _read(path, {"name", "class", "group"})} if path.is_file() else {}


def rows(root: Path, splits: tuple[str, ...], out: Path) -> Iterator[Row | Skipped]:
    if not root.is_dir():
        raise CatalogError(f"{root} is not a folder; expected {FORMAT.summary}")
    groups = _groups(root)
    for split in splits:
        listing = root / LISTS[split]
        if not listing.is_file():
            raise CatalogError(f"{root} has no {LISTS[split]}; expected {FORMAT.summary}")
        needed = {"name", "class", "group"} if split == "train" else {"name", "class"}
        for line, row in _read(listing, needed):
            image = root / split / row["name"]
            if not row["name"] or not row["class"]:
                yield Skipped(f"{listing}:{line}", "row without name or class")
            elif not image.is_file():
                yield Skipped(str(image), "file not found")
            else:
                group = row.get("group") or groups.get(row["class"])
                yield Row(image, row["class"], category=group or None)


FORMAT = Format("products10k", rows, splits=("train", "test"), default_splits=("train",),
                summary="train/ and test/ image folders with train.csv (name,class,group) and "
                        "test_kaggletest.csv (name,class,usage)")
