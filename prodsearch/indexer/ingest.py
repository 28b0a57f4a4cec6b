"""From a catalog listing to catalog rows and vectors: hash, de-duplicate, compare, embed.

Shared by ``index`` (everything is new), ``add`` (what the index lacks) and ``update`` (what
changed). Files are identified by SKU and MD5, so the same photo under another name is not embedded
twice and an edited photo under the same name is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from prodsearch.catalog.files import file_md5
from prodsearch.errors import CatalogError
from prodsearch.catalog.listing import Item, Listing, Skipped
from prodsearch.retrieval.runtime import Encoder
from prodsearch.retrieval.embedding import EmbedFiles, FilesDone, embed_files


@dataclass(frozen=True)
class Duplicate:
    path: str
    same_as: str
    sku: str


@dataclass(frozen=True, slots=True)
class FileInfo:
    md5: str
    size: int
    mtime: float


@dataclass
class Scan:
    """A listing's readable files, keyed by (SKU, MD5), with what was left out and why."""

    files: dict[tuple[str, str], Item] = field(default_factory=dict)
    info: dict[tuple[str, str], FileInfo] = field(default_factory=dict)
    duplicates: list[Duplicate] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    shared_across_skus: int = 0  # files whose bytes appear under more than one SKU


@dataclass
class Embedded:
    """New catalog rows (without ids) and their vectors, row for row."""

    images: list[dict] = field(default_factory=list)
    vectors: np.ndarray | None = None
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0


def file_info(item: Item, known: dict[str, FileInfo] | None = None) -> FileInfo | Skipped:
    """Hash one file (reusing its ``known`` hash if its size and mtime did not change), or say why it
    cannot be read: a file may vanish or lose its permissions after it was listed, and that must
    skip the file, not end the run. ``scan`` and ``stats`` both hash through here."""
    try:
        stat = item.path.stat()
        cached = (known or {}).get(str(item.path))
        if cached is not None and (cached.size, cached.mtime) == (stat.st_size, stat.st_mtime):
            return cached
        return FileInfo(file_md5(item.path), stat.st_size, stat.st_mtime)
    except OSError as exc:
        return Skipped(str(item.path), f"cannot read file: {exc.strerror or exc}")


def nothing_readable(catalog: str | os.PathLike | Listing, files: int, skipped: list[Skipped], *,
                     changed: str = "") -> CatalogError:
    """The one refusal of a catalog none of whose files could be used, with the first reason; a
    listing read already is named by the folder or CSV it was read from."""
    catalog = catalog.source if isinstance(catalog, Listing) else catalog
    example = f"; e.g. {skipped[0].path}: {skipped[0].reason}" if skipped else ""
    return CatalogError(f"none of the {files} image files in {catalog} could be read{example}{changed}")


def scan(listing: Listing, known: dict[str, FileInfo] | None = None) -> Scan:
    """Hash every file (reusing ``known`` hashes of paths whose size and mtime did not change) and
    keep the first of identical files within a SKU."""
    result = Scan(skipped=list(listing.skipped))
    skus_of_hash: dict[str, set[str]] = {}
    for item in listing.items:
        info = file_info(item, known)
        if isinstance(info, Skipped):
            result.skipped.append(info)
            continue
        key = (item.sku, info.md5)
        if key in result.files:
            first = result.files[key]  # reported as found (the link, the manifest line), not as resolved
            result.duplicates.append(Duplicate(item.origin or str(item.path), first.origin or str(first.path),
                                               item.sku))
            continue
        result.files[key] = item
        result.info[key] = info
        skus_of_hash.setdefault(info.md5, set()).add(item.sku)
    result.shared_across_skus = sum(1 for _, d in result.files if len(skus_of_hash[d]) > 1)
    return result


def product_rows(items: list[Item]) -> list[dict]:
    """One row per SKU; the first non-empty name and category given for a SKU win."""
    products: dict[str, dict] = {}
    for item in items:
        row = products.setdefault(item.sku, {"sku": item.sku, "name": None, "category": None})
        row["name"] = row["name"] or item.name
        row["category"] = row["category"] or item.category
    for row in products.values():
        row["name"] = row["name"] or row["sku"]
    return list(products.values())


def scanned_products(scanned: Scan) -> dict[str, dict]:
    """:func:`product_rows` of every file a scan kept, by SKU: what a chunk of new images brings along."""
    return {row["sku"]: row for row in product_rows(list(scanned.files.values()))}


def embed_new(
    encoder: Encoder,
    scanned: Scan,
    keys: list[tuple[str, str]],
    *,
    batch_size: int | None = None,
    num_workers: int | None = None,
    progress: FilesDone | None = None,
    views: int = 1,
    embed_with: EmbedFiles = embed_files,
) -> Embedded:
    """Embed the files of ``keys`` as ``views`` views each (the index's setting) with ``embed_with``
    (this process, or every process of a torchrun run: :func:`embedder_in`); unreadable
    ones are skipped with their reason."""
    items = [scanned.files[k] for k in keys]
    result = embed_with(encoder, [it.path for it in items], batch_size=batch_size, num_workers=num_workers,
                        progress=progress, views=views)
    images = []
    for pos, (w, h) in zip(result.positions.tolist(), result.sizes.tolist()):
        info = scanned.info[keys[pos]]
        images.append({"sku": items[pos].sku, "path": str(items[pos].path), "md5": info.md5, "width": int(w),
                       "height": int(h), "size": info.size, "mtime": info.mtime})
    skipped = [Skipped(str(items[p].path), reason) for p, reason in sorted(result.failures.items())]
    return Embedded(images, result.vectors, skipped, result.seconds)

