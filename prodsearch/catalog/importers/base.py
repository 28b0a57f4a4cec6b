"""What every importer yields, and how a format describes itself."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prodsearch.catalog.listing import Skipped
from prodsearch.errors import CatalogError


@dataclass(frozen=True)
class Row:
    """One image of an imported catalog."""

    image: Path
    sku: str
    name: str | None = None
    category: str | None = None  # a path of any depth: "Fruit/Apple", "level1/level2/level3"
    product: str | None = None  # groups several photos of one product (Cdiscount: the product _id)


RowSource = Callable[[Path, tuple[str, ...], Path], Iterator[Row | Skipped]]


@dataclass(frozen=True)
class Format:
    """A dataset layout: ``rows(source, splits, manifest_path)`` streams its images."""

    name: str
    rows: RowSource
    splits: tuple[str, ...]  # the splits the layout has
    default_splits: tuple[str, ...]
    summary: str  # the layout in one line, for error messages and help


def malformed(path: Path, line: int, expected: str) -> CatalogError:
    """The one message for a dataset file that does not have its published layout."""
    return CatalogError(f"{path} line {line} is malformed: {expected}; is this the right dataset and format?")
