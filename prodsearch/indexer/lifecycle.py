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
from typing import Callable, Container, Iterable

from prodsearch.errors import CatalogError, ProdsearchError
from prodsearch.choices import CHUNK_PHOTOS
from prodsearch.indexer.chunked import chunk_progress
from prodsearch.indexer.ingest import Duplicate, FileInfo, embed_new, nothing_readable, scan, scanned_products
from prodsearch.indexer.models import encoder_for
from prodsearch.indexer.rejection import REJECTION_SETTING, RejectRule
from prodsearch.catalog.listing import Listing, Skipped, SkuSpellings, kept_reason, read_listing
from prodsearch.indexer.writer import IndexWriter
from prodsearch.indexer.store import EMBEDDING_DIR
from prodsearch.retrieval.embedding import FilesDone
from prodsearch.retrieval.embedding_team import EmbeddingTeam, embedder_in, embeds_as_team

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
    added: int = 0  # images embedded and added (not the changed ones)
    removed: int = 0  # images removed (not the old content of changed ones)
    changed: int = 0  # images whose file changed content under the same path and SKU: re-embedded (counted here only)
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
    def embedded(self) -> int:
        """Images embedded: the added ones and the changed ones."""
        return self.added + self.changed

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.embed_seconds if self.embed_seconds > 0 else 0.0


def add_to_index(
    catalog: str | os.PathLike | Listing | Callable[[], Listing],
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
    chunk_size: int = CHUNK_PHOTOS,
) -> ChangeReport | None:
    """Add the catalog's (a path, a listing already read, or a function that gives the listing once
    the writer lock is held: the server stores uploaded photos then, so that no other writer's
    clean-up of unused uploads can take them) new SKUs and new images of known SKUs; what the index
    holds is skipped without embedding, so running the same add twice changes nothing."""
    return _sync(catalog, index_dir, "add", model=model, remove_missing=False, batch_size=batch_size, runtime=runtime,
                 device=device, precision=precision, num_workers=num_workers, progress=progress, wait=wait,
                 chunk_size=chunk_size)


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
    chunk_size: int = CHUNK_PHOTOS,
) -> ChangeReport | None:
    """Make the index match the catalog exactly: add what is new, remove what disappeared, re-embed
    files whose content changed, refresh product names and categories.

    Files that exist but cannot be read keep their images (reported as skipped); a catalog with
    nothing readable is refused, and so is removing more than half the index unless
    ``allow_mass_removal``."""
    return _sync(catalog, index_dir, "update", model=model, remove_missing=True, batch_size=batch_size, runtime=runtime,
                 device=device, precision=precision, num_workers=num_workers, progress=progress, wait=wait,
                 allow_mass_removal=allow_mass_removal, chunk_size=chunk_size)


@embeds_as_team
def _sync(catalog, index_dir, command: str, *, model, runtime: str, device: str, precision: str, remove_missing: bool,
          wait: float, allow_mass_removal: bool = False, chunk_size: int = CHUNK_PHOTOS, team: EmbeddingTeam | None,
          **embed_kwargs) -> ChangeReport:
    """``add`` and ``update``: diff the catalog against the index without loading every image row
    (lookups by path and MD5, one pass over the rows for what is gone), then embed what is new and
    commit it ``chunk_size`` photos per generation, so memory holds one chunk and a run that is
    stopped keeps what it committed (the next run does not embed it again); removals, moves and
    product changes come in the last generation. Under torchrun every process embeds its share of
    each chunk; rank 0 returns the report, the others None."""
    start = time.perf_counter()
    index_dir = Path(index_dir)
    writer = IndexWriter(index_dir, command, wait=wait)  # a read-only index fails before the model loads
    encoder = encoder_for(writer.manifest, index_dir, model=model, runtime=runtime, device=device, precision=precision)
    listing = catalog if isinstance(catalog, Listing) else None if callable(catalog) else read_listing(catalog)
    with writer:
        if listing is None:
            listing = catalog = catalog()
        db = writer.db
        held_count, known_skus = db.counts()["images"], db.all_skus()
        files = len(listing.items)
        if not remove_missing:  # an add cannot bring 'milk' into an index that holds 'Milk'
            listing, clashes = _without_case_clashes(listing, known_skus)
            if clashes and not listing.items:  # that is the whole story, not a file that "could not be read"
                raise case_clash_error(clashes, index_dir)
        known = {path: FileInfo(*info) for path, info in db.file_infos(str(it.path) for it in listing.items).items()}
        scanned = scan(listing, known=known)
        held = db.held_images(scanned.files)
        new_keys = [k for k in scanned.files if k not in held]
        listed = {str(item.path) for item in listing.items}
        gone, kept = _gone_or_kept(db.images_not_in(scanned.files) if remove_missing else [], listing, listed,
                                   scanned.skipped)
        removing = sum(path not in listed for _, _, path in gone)  # a file listed again is replaced, not removed
        rows = scanned_products(scanned)
        report = ChangeReport(index_dir, unchanged=len(held), duplicates=scanned.duplicates)
        skipped, added_skus = list(scanned.skipped), set()
        # A file of the same path and SKU with new content is changed (its old image replaced), not added and removed.
        gone_files, replaced = {(sku, path) for _, sku, path in gone}, set()
        progress = embed_kwargs.pop("progress", None)
        embed_kwargs["embed_with"] = embedder_in(team, index_dir / EMBEDDING_DIR)
        for first in range(0, len(new_keys), chunk_size):
            embedded = embed_new(encoder, scanned, new_keys[first:first + chunk_size], views=writer.manifest.views,
                                 progress=chunk_progress(progress, first, len(new_keys)), **embed_kwargs)
            skipped += embedded.skipped
            report.embed_seconds += embedded.seconds
            if first == 0:  # before anything is committed
                last = first + chunk_size >= len(new_keys)
                _check_before_writing(catalog, index_dir, files, skipped, held, embedded.images, last, removing,
                                      held_count, allow_mass_removal)
            if not embedded.images:
                continue
            # Each chunk's products come with it (a reader never sees an image without its product); an
            # add writes only new SKUs' (it never rewrites what the index says of known products).
            skus = {img["sku"] for img in embedded.images}
            commit = writer.commit(products=[rows[sku] for sku in sorted(skus if remove_missing else skus - known_skus)],
                                   images=embedded.images, vectors=embedded.vectors)
            added_skus |= skus
            changed = [(img["sku"], img["path"]) for img in embedded.images if (img["sku"], img["path"]) in gone_files]
            report.changed += len(changed)
            report.added += len(embedded.images) - len(changed)
            replaced.update(changed)
            report.added_ids += commit.added_ids
            report.generation = commit.generation
        report.new_skus = sorted(added_skus - known_skus)
        if not new_keys:
            _check_before_writing(catalog, index_dir, files, skipped, held, [], True, removing, held_count,
                                  allow_mass_removal)
        if not held and not report.embedded:
            raise nothing_readable(catalog, files, skipped, changed=f"; nothing was changed in {index_dir}")
        failed = {s.path: s for s in skipped[len(scanned.skipped):]}  # new content that could not be embedded
        kept += [(i, sku, path, failed[path]) for i, sku, path in gone if path in failed]  # the old image stays
        gone = [(i, sku, path) for i, sku, path in gone if path not in failed]
        moved = {held[k][0]: str(item.path) for k, item in scanned.files.items()
                 if k in held and held[k][1] != str(item.path)} if remove_missing else {}
        products = list(rows.values()) if remove_missing else []  # update: names and categories from the catalog
        if gone or moved or (products and _metadata_changed(writer, products)):
            commit = writer.commit(products=products, remove=[i for i, _, _ in gone], moved=moved)
            report.generation, report.removed_skus = commit.generation, commit.removed_skus
        report.removed = sum((sku, path) not in replaced for _, sku, path in gone)
        report.skipped = skipped + _not_shown([why for *_, why in kept], {s.path for s in skipped})
        report.kept_unreadable = len(kept)
    report.seconds = time.perf_counter() - start
    return report


def _gone_or_kept(candidates: list[tuple[int, str, str]], listing: Listing, listed: set[str],
                  skipped: list[Skipped]) -> tuple[list[tuple[int, str, str]], list[tuple[int, str, str, Skipped]]]:
    """The images the catalog no longer yields as they are (``candidates``: id, SKU, path), split into
    those that go and those kept, each with why (see :func:`~prodsearch.catalog.listing.kept_reason`)."""
    reasons = {s.path: s.reason for s in skipped}
    gone, kept = [], []
    for i, sku, path in candidates:
        reason = kept_reason(path, listing, listed, reasons)
        if reason is None:
            gone.append((i, sku, path))
        else:
            kept.append((i, sku, path, Skipped(path, reason)))
    return gone, kept


def _not_shown(reasons: list[Skipped], shown: Container[str]) -> list[Skipped]:
    """Those of ``reasons`` (one per file) that neither name a file in ``shown`` nor one below a folder in it."""
    return list({s.path: s for s in reasons if not any(str(p) in shown for p in (Path(s.path), *Path(s.path).parents))}
                .values())


def _check_before_writing(catalog, index_dir: Path, files: int, skipped: list[Skipped], held: dict, embedded: list,
                          last: bool, removing: int, held_count: int, allow_mass_removal: bool) -> None:
    """What refuses a whole add or update, checked once the first chunk is embedded and before it is
    committed: a catalog with nothing readable, or (update) one that would remove (``removing``
    images) most of the index."""
    if last and not held and not embedded:
        raise nothing_readable(catalog, files, skipped, changed=f"; nothing was changed in {index_dir}")
    if removing and not allow_mass_removal:
        check_removal_share(removing, held_count, index_dir)


def _without_case_clashes(listing: Listing, index_skus: set[str]) -> tuple[Listing, dict[str, str]]:
    """The listing less items whose SKU differs from one of the index's only in case (skipped), and
    those SKUs with the index's spelling of each."""
    spellings = SkuSpellings(index_skus)
    items, skipped, clashes = [], list(listing.skipped), {}
    for item in listing.items:
        reason = spellings.problem(item.sku)
        if reason:
            skipped.append(Skipped(item.origin or str(item.path), f"{reason} (the index holds it)"))
            clashes[item.sku] = spellings.clash(item.sku)
        else:
            items.append(item)
    return dataclasses.replace(listing, items=items, skipped=skipped), clashes


def case_clash_error(clashes: dict[str, str], index_dir: Path) -> CatalogError:
    """The refusal of an add whose every SKU is spelled as one of the index's in other case."""
    (sku, existing), more = next(iter(clashes.items())), len(clashes) - 1
    others = f" (and {more} more SKU{'s' if more > 1 else ''} like it)" if more else ""
    return CatalogError(f"SKU {sku!r} differs only in case from the existing {existing!r}{others}; use the "
                        f"existing spelling; nothing was changed in {index_dir}")


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


def clear_rejection(index_dir: str | os.PathLike, *, wait: float = 0.0) -> int | None:
    """Remove the stored "not in catalog" rule (``calibrate --clear``), so that answers name the
    nearest SKU again; the new generation, or None when the index had no rule (nothing changes)."""
    with IndexWriter(index_dir, "calibrate", wait=wait) as writer:
        if writer.db.setting(REJECTION_SETTING) is None:
            return None
        return writer.commit(settings={REJECTION_SETTING: None}).generation
