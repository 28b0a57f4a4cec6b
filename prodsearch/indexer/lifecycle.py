"""A catalog changes every day: ``add``, ``remove`` and ``update`` an index without rebuilding it.

Each operation embeds only what is new, then commits everything it changes in one transaction
under the writer lock (see :mod:`.writer`), so the index is always the old one or the new one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from prodsearch.errors import ProdsearchError
from prodsearch.indexer.ingest import Duplicate, FileInfo, embed_new, nothing_readable, product_rows, scan
from prodsearch.indexer.models import encoder_for
from prodsearch.indexer.rejection import REJECTION_SETTING, RejectRule
from prodsearch.catalog.listing import Listing, Skipped, SkuSpellings, read_listing
from prodsearch.indexer.writer import IndexWriter
from prodsearch.retrieval.embedding import FilesDone

log = logging.getLogger(__name__)


# ``update`` removes at most this share of an index unless told it may (``--allow-mass-removal``).
MASS_REMOVAL_SHARE = 0.5


class NotInIndexError(ProdsearchError):
    """A SKU or image id asked for is not in the index."""


class MassRemovalError(ProdsearchError):
    """An update would remove most of the index: refused unless allowed."""


@dataclass
class ChangeReport:
    index_dir: Path
    added: int = 0  # images embedded and added
    removed: int = 0
    changed: int = 0  # files whose content changed under the same path: re-embedded (counted here only)
    unchanged: int = 0
    new_skus: list[str] = field(default_factory=list)
    removed_skus: list[str] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    kept_unreadable: int = 0  # images kept although their files cannot be read now (update)
    generation: int | None = None  # None: nothing to change, nothing written
    added_ids: list[int] = field(default_factory=list)  # the ids the added images got
    seconds: float = 0.0
    embed_seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.added / self.embed_seconds if self.embed_seconds > 0 else 0.0


def add_to_index(
    catalog: str | os.PathLike | Listing,
    index_dir: str | os.PathLike,
    *,
    model: str | None = None,
    batch_size: int | None = None,
    runtime: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    num_workers: int | None = None,
    progress: FilesDone | None = None,
    wait: float = 0.0,
) -> ChangeReport:
    """Add the catalog's (a path, or a listing already read) new SKUs and new images of known SKUs;
    what the index holds is skipped without embedding, so running the same add twice changes nothing."""
    return _sync(catalog, index_dir, "add", model=model, remove_missing=False, batch_size=batch_size, runtime=runtime,
                 device=device, precision=precision, num_workers=num_workers, progress=progress, wait=wait)


def update_index(
    catalog: str | os.PathLike,
    index_dir: str | os.PathLike,
    *,
    model: str | None = None,
    batch_size: int | None = None,
    runtime: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    num_workers: int | None = None,
    progress: FilesDone | None = None,
    wait: float = 0.0,
    allow_mass_removal: bool = False,
) -> ChangeReport:
    """Make the index match the catalog exactly: add what is new, remove what disappeared, re-embed
    files whose content changed, refresh product names and categories.

    Files that exist but cannot be read keep their images (reported as skipped); a catalog with
    nothing readable is refused, and so is removing more than half the index unless
    ``allow_mass_removal``."""
    return _sync(catalog, index_dir, "update", model=model, remove_missing=True, batch_size=batch_size, runtime=runtime,
                 device=device, precision=precision, num_workers=num_workers, progress=progress, wait=wait,
                 allow_mass_removal=allow_mass_removal)


def _sync(catalog, index_dir, command: str, *, model, runtime: str, device: str, precision: str, remove_missing: bool,
          wait: float, allow_mass_removal: bool = False, **embed_kwargs) -> ChangeReport:
    start = time.perf_counter()
    index_dir = Path(index_dir)
    writer = IndexWriter(index_dir, command, wait=wait)  # a read-only index fails before the model loads
    encoder = encoder_for(writer.manifest, index_dir, model=model, runtime=runtime, device=device, precision=precision)
    listing = catalog if isinstance(catalog, Listing) else read_listing(catalog)
    with writer:
        rows = writer.db.image_rows()
        held = {(r["sku"], r["md5"]): r for r in rows}
        files = len(listing.items)
        if not remove_missing:  # an add cannot bring 'milk' into an index that holds 'Milk'
            listing = _without_case_clashes(listing, {r["sku"] for r in rows})
        scanned = scan(listing, known={r["path"]: FileInfo(r["md5"], r["size"], r["mtime"]) for r in rows})
        new_keys = [k for k in scanned.files if k not in held]
        embedded = embed_new(encoder, scanned, new_keys, views=writer.manifest.views, **embed_kwargs)
        skipped = scanned.skipped + embedded.skipped
        unchanged = len(scanned.files) - len(new_keys)
        if not unchanged and not embedded.images:
            raise nothing_readable(catalog, files, skipped, changed=f"; nothing was changed in {index_dir}")
        # An unreadable file is not a deleted one: the image it was keeps its place in the index.
        unreadable = {s.path for s in skipped}
        gone = [r for key, r in held.items() if key not in scanned.files and r["path"] not in unreadable] \
            if remove_missing else []
        if not allow_mass_removal:
            check_removal_share(len(gone), len(rows), index_dir)
        known_skus = {r["sku"] for r in rows}
        if remove_missing:  # the catalog is the truth, names and categories included
            products = product_rows(list(scanned.files.values()))
        else:  # new SKUs only: an add never rewrites what the index says of known products
            products = product_rows([scanned.files[(img["sku"], img["md5"])] for img in embedded.images
                                     if img["sku"] not in known_skus])
        gone_paths = {r["path"] for r in gone}
        report = ChangeReport(
            index_dir, added=len(embedded.images), removed=len(gone),
            changed=sum(img["path"] in gone_paths for img in embedded.images),
            unchanged=unchanged, new_skus=sorted({img["sku"] for img in embedded.images} - known_skus),
            duplicates=scanned.duplicates, skipped=skipped, embed_seconds=embedded.seconds,
            kept_unreadable=sum(r["path"] in unreadable for r in held.values()) if remove_missing else 0)
        moved = {held[k]["id"]: str(item.path) for k, item in scanned.files.items()
                 if k in held and held[k]["path"] != str(item.path)} if remove_missing else {}
        if embedded.images or gone or moved or (remove_missing and _metadata_changed(writer, products)):
            commit = writer.commit(products=products, images=embedded.images, vectors=embedded.vectors,
                                   remove=[r["id"] for r in gone], moved=moved)
            report.generation, report.removed_skus, report.added_ids = commit.generation, commit.removed_skus, commit.added_ids
    report.seconds = time.perf_counter() - start
    return report


def _without_case_clashes(listing: Listing, index_skus: set[str]) -> Listing:
    """The listing less items whose SKU differs from one of the index's only in case (skipped)."""
    spellings = SkuSpellings(index_skus)
    items, skipped = [], list(listing.skipped)
    for item in listing.items:
        reason = spellings.problem(item.sku)
        if reason:
            skipped.append(Skipped(item.origin or str(item.path), f"{reason} (the index holds it)"))
        else:
            items.append(item)
    return dataclasses.replace(listing, items=items, skipped=skipped)


def check_removal_share(removing: int, held: int, index_dir: Path) -> None:
    """Refuse to remove more than :data:`MASS_REMOVAL_SHARE` of an index in one update: far more
    often a wrong or half-mounted catalog folder than a shop that sold out."""
    if held and removing > MASS_REMOVAL_SHARE * held:
        raise MassRemovalError(
            f"this update would remove {removing} of the {held} images in {index_dir} ({removing / held:.0%}); "
            f"removing more than {MASS_REMOVAL_SHARE:.0%} of an index in one update needs --allow-mass-removal "
            "(check that CATALOG is the right, complete catalog); nothing was changed")


def _metadata_changed(writer: IndexWriter, products: list[dict]) -> bool:
    held = writer.db.products(p["sku"] for p in products)
    return any((held[p["sku"]].name, held[p["sku"]].category) != (p["name"], p["category"])
               for p in products if p["sku"] in held)


def remove_from_index(
    index_dir: str | os.PathLike,
    *,
    skus: Iterable[str] = (),
    image_ids: Iterable[int] = (),
    wait: float = 0.0,
) -> ChangeReport:
    """Remove whole products and/or single images; all or nothing: unknown SKUs or ids are an
    error and nothing is removed."""
    start = time.perf_counter()
    index_dir = Path(index_dir)
    skus, image_ids = list(dict.fromkeys(skus)), list(dict.fromkeys(int(i) for i in image_ids))
    if not skus and not image_ids:
        raise ProdsearchError("nothing to remove: name SKUs with --sku or image ids with --image")
    with IndexWriter(index_dir, "remove", wait=wait) as writer:
        rows = writer.db.image_rows()
        held_skus, held_ids = {r["sku"] for r in rows}, {r["id"] for r in rows}
        missing = [f"SKU {s!r}" for s in skus if s not in held_skus] + [f"image {i}" for i in image_ids if i not in held_ids]
        if missing:
            raise NotInIndexError(f"not in the index {index_dir}: {', '.join(missing[:10])}"
                                  f"{' and more' if len(missing) > 10 else ''}; nothing was removed")
        wanted = set(skus)
        ids = sorted({r["id"] for r in rows if r["sku"] in wanted} | set(image_ids))
        commit = writer.commit(remove=ids)
    return ChangeReport(index_dir, removed=len(ids), removed_skus=commit.removed_skus,
                        generation=commit.generation, seconds=time.perf_counter() - start)


def set_rejection(index_dir: str | os.PathLike, rule: RejectRule | None, *, wait: float = 0.0) -> int:
    """Store the "not in catalog" rule in the index (``None`` removes it) as a new generation, so
    that running servers pick it up on their next refresh; returns that generation."""
    with IndexWriter(index_dir, "calibrate", wait=wait) as writer:
        return writer.commit(settings={REJECTION_SETTING: None if rule is None else rule.to_dict()}).generation
