"""Importers: the public datasets' own layouts turned into prodsearch CSV manifests.

Each format is a function ``rows(source, splits, out) -> Iterator[Row | Skipped]`` in the
:data:`FORMATS` registry; :func:`import_catalog` streams its rows into a manifest
(``image,sku,name,category,product``, image paths relative to the manifest) that ``index``,
``train``, ``eval`` and ``stats`` read like any other catalog. Rows are streamed, never held all at
once: the Cdiscount training file has 12 million images.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prodsearch.errors import CatalogError
from prodsearch.catalog.importers import cdiscount, grocery_store, products10k
from prodsearch.catalog.importers.base import Format, Row
from prodsearch.catalog.csv_writer import CatalogCsvWriter
from prodsearch.catalog.listing import Skipped

log = logging.getLogger(__name__)


FORMATS: dict[str, Format] = {f.name: f for f in (products10k.FORMAT, cdiscount.FORMAT, grocery_store.FORMAT)}


@dataclass
class ImportReport:
    manifest: Path
    images: int = 0
    skus: int = 0
    products: int = 0
    categories: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0


def import_catalog(fmt: str, source: str | os.PathLike, out: str | os.PathLike, *,
                   splits: tuple[str, ...] = (), progress: Callable[[int, int | None], None] | None = None
                   ) -> ImportReport:
    """Write the manifest ``out`` for the ``splits`` (default: the format's own) of a dataset in
    format ``fmt``; the manifest appears complete or not at all. ``progress(rows written, None)``
    follows the writing (the total is not known before the dataset has been read)."""
    start = time.perf_counter()
    if fmt not in FORMATS:
        raise CatalogError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    spec = FORMATS[fmt]
    splits = tuple(splits) or spec.default_splits
    unknown = [s for s in splits if s not in spec.splits]
    if unknown:
        raise CatalogError(f"{fmt} has no split {unknown[0]!r}; its splits are {', '.join(spec.splits)}")
    source, out = Path(source).expanduser(), Path(out).expanduser()
    if not source.exists():
        raise CatalogError(f"{source} does not exist; expected a {fmt} dataset: {spec.summary}")
    out.parent.mkdir(parents=True, exist_ok=True)
    report = ImportReport(out)
    partial = out.with_name(f".{out.name}.partial")
    try:
        try:
            _write_rows(spec.rows(source, splits, out), partial, report, progress)
        except OSError as exc:  # a dataset file or the manifest's folder that cannot be read or written
            raise CatalogError(f"cannot {'write' if exc.filename == str(partial) else 'read'} "
                               f"{exc.filename or source}: {exc.strerror or exc}") from None
        if not report.images:
            example = f" (e.g. {report.skipped[0].path}: {report.skipped[0].reason})" if report.skipped else ""
            raise CatalogError(f"no images found in {source} for splits {', '.join(splits)}{example}; "
                               f"expected a {fmt} dataset: {spec.summary}")
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    report.seconds = time.perf_counter() - start
    return report


def _write_rows(rows: Iterator[Row | Skipped], path: Path, report: ImportReport,
                progress: Callable[[int, int | None], None] | None = None) -> None:
    """Stream rows into the CSV at ``path`` (beside the manifest it becomes), counting into ``report``."""
    skus, products, categories = set(), set(), set()
    with CatalogCsvWriter(path, ("name", "category", "product")) as writer:
        for row in rows:
            if isinstance(row, Skipped):
                report.skipped.append(row)
                continue
            writer.write(row.image, row.sku, name=row.name, category=row.category, product=row.product)
            report.images += 1
            if progress:
                progress(report.images, None)
            skus.add(row.sku)
            products.add(row.product or row.sku)
            if row.category:
                categories.add(row.category)
            if report.images % 100_000 == 0:
                log.info("%s: %d images so far", path, report.images)
    report.skus, report.products, report.categories = len(skus), len(products), len(categories)


__all__ = ["FORMATS", "Format", "ImportReport", "Row", "import_catalog"]
