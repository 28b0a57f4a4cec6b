"""The one writer of the catalog CSV format that :func:`~prodsearch.catalog.listing.read_listing`
reads: header ``image,sku[,name,category,product]``, image paths relative to the CSV's folder."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import IO, Iterable

from prodsearch.catalog.listing import entry_path

COLUMNS = ("image", "sku", "name", "category", "product")


class CatalogCsvWriter:
    """``with CatalogCsvWriter(path) as w: w.write(image, sku, name=..., category=...)``: rows are
    streamed (an importer writes millions). ``columns`` after ``image,sku`` are the optional ones
    the file has; image paths (absolute, or relative to the working directory, like any path) are
    written relative to the CSV's folder."""

    def __init__(self, path: str | os.PathLike, columns: Iterable[str] = ("name", "category")):
        self.path = Path(path)
        self.columns = ("image", "sku", *columns)
        unknown = set(self.columns) - set(COLUMNS)
        if unknown:
            raise ValueError(f"not catalog CSV columns: {', '.join(sorted(unknown))}")
        self.rows = 0
        self._file: IO[str] | None = None

    def __enter__(self) -> "CatalogCsvWriter":
        self._file = open(self.path, "w", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file)
        self._writer.writerow(self.columns)
        return self

    def write(self, image: str | os.PathLike, sku: str, **fields: str | None) -> None:
        # Relative between real folders: the reader resolves the CSV's folder and ``..`` as the system does,
        # so a path written lexically through a symlinked folder would lead elsewhere.
        relative = os.path.relpath(entry_path(Path(image)), os.path.realpath(self.path.parent))
        values = {"image": relative, "sku": sku, **fields}
        self._writer.writerow([values.get(column) or "" for column in self.columns])
        self.rows += 1

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def write_catalog_csv(path: str | os.PathLike, rows: Iterable[dict], columns: Iterable[str] = ("name", "category")) -> Path:
    """Write ``rows`` (dicts with ``image``, ``sku`` and the optional ``columns``) in one go."""
    with CatalogCsvWriter(path, columns) as writer:
        for row in rows:
            writer.write(**{key: row.get(key) for key in writer.columns})
    return Path(path)
