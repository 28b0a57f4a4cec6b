"""Reading a catalog (or a labelled query set): a folder per SKU, or a CSV manifest.

Both formats yield the same :class:`Listing`; files that cannot be used are listed with a reason
instead of stopping the run.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from prodsearch.errors import CatalogError
from prodsearch.retrieval.images import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

FORMAT_HELP = ("expected a folder with one sub-folder per SKU (catalog/<sku>/*.jpg) or a CSV file with header "
               "image,sku[,name,category,product]")


@dataclass(frozen=True)
class Item:
    """One labelled image; ``name`` and ``category`` are optional product metadata, ``product``
    groups the photos of one physical product (a query set's several shots of it)."""

    path: Path
    sku: str
    name: str | None = None
    category: str | None = None
    product: str | None = None


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


@dataclass
class Listing:
    source: Path
    kind: str  # "folder" or "csv"
    items: list[Item] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def skus(self) -> list[str]:
        return sorted({it.sku for it in self.items})


def read_listing(source: str | os.PathLike) -> Listing:
    """Read a catalog or query set in either supported format; raise :class:`CatalogError` if unusable."""
    path = Path(source).expanduser()
    if not path.exists():
        raise CatalogError(f"{source} does not exist; {FORMAT_HELP}")
    if path.is_dir():
        listing = _read_folder(path)
    elif path.suffix.lower() == ".csv":
        listing = _read_csv(path)
    else:
        raise CatalogError(f"{source} is neither a folder nor a .csv file; {FORMAT_HELP}")
    if not listing.items:
        detail = f" ({len(listing.skipped)} files skipped, e.g. {listing.skipped[0].path}: {listing.skipped[0].reason})" if listing.skipped else ""
        raise CatalogError(f"no images found in {source}{detail}; {FORMAT_HELP}")
    return listing


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _read_folder(root: Path) -> Listing:
    listing = Listing(root.resolve(), "folder")
    sku_folders: dict[str, str] = {}  # casefolded name -> the spelling taken
    for path in sorted(root.rglob("*")):
        if path.is_dir() or _is_hidden(path, root):
            continue
        rel = path.relative_to(root)
        if len(rel.parts) == 1:
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                listing.skipped.append(Skipped(str(path), "not inside a SKU folder (catalog/<sku>/image.jpg)"))
            continue  # README files and the like beside the SKU folders are not catalog content
        reason = _folder_file_problem(path, root, rel.parts[0], sku_folders)
        if reason:
            listing.skipped.append(Skipped(str(path), reason))
            continue
        listing.items.append(Item(path.resolve(), rel.parts[0]))
    return listing


def _folder_file_problem(path: Path, root: Path, sku: str, sku_folders: dict[str, str]) -> str | None:
    """Why a file of a folder catalog cannot be used, or None."""
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"unsupported file type {path.suffix or '(none)'}"
    if path.is_symlink() and not path.resolve().is_relative_to(root.resolve()):
        return f"symlink to {path.resolve()}, outside the catalog folder"
    taken = sku_folders.setdefault(sku.casefold(), sku)
    if taken != sku:
        return f"SKU folder {sku!r} differs from {taken!r} only in case; merge or rename one of them"
    return None


def _read_csv(csv_path: Path) -> Listing:
    listing = Listing(csv_path.resolve(), "csv")
    base = csv_path.resolve().parent
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip().lower() for h in (reader.fieldnames or [])]
        if "image" not in header or "sku" not in header:
            raise CatalogError(f"{csv_path} has header {','.join(header) or '(empty)'}; {FORMAT_HELP}")
        reader.fieldnames = header
        for line, row in enumerate(reader, start=2):
            image, sku = (row.get("image") or "").strip(), (row.get("sku") or "").strip()
            if not image or not sku:
                listing.skipped.append(Skipped(f"{csv_path}:{line}", "row without image or sku"))
                continue
            path = (base / image).resolve()
            if not path.is_file():
                listing.skipped.append(Skipped(str(base / image), "file not found"))
                continue
            name = (row.get("name") or "").strip() or None
            category = (row.get("category") or "").strip().strip("/") or None
            product = (row.get("product") or "").strip() or None
            listing.items.append(Item(path, sku, name, category, product))
    return listing
