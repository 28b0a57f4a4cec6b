"""``index``: build an index folder from a catalog, or rebuild an existing one in place.

A new folder is assembled under a temporary name beside its destination and renamed into place.
An existing index is rebuilt under the writer lock in one transaction: readers see the old
catalog until the new one is complete.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prodsearch.errors import IndexDirError, IndexTypeError, ReadOnlyIndexError
from prodsearch.indexer.catalog_db import CatalogDB
from prodsearch.indexer.failpoints import crash_point
from prodsearch.indexer.ingest import Duplicate, Embedded, embed_new, nothing_readable, product_rows, scan
from prodsearch.indexer.lock import WriterLock
from prodsearch.indexer.manifest import (Manifest, NewerFormatError, check_replaceable, check_target, is_index_dir,
                                         model_differences, read_manifest, write_manifest)
from prodsearch.indexer.models import encoder_for, keep_model
from prodsearch.indexer.publish import check_can_create, publish_new, publish_replacing, staging_dir
from prodsearch.catalog.listing import Skipped, read_listing
from prodsearch.indexer.store import CATALOG_DB, rebuild_vectors, snapshot_path
from prodsearch.indexer.index_types import resize_index_type, resolve_index_type
from prodsearch.indexer.vectors import index_type_name, write_vector_index
from prodsearch.indexer.writer import IndexWriter
from prodsearch.choices import DEFAULT_MODEL
from prodsearch.retrieval.config import EmbedderConfig
from prodsearch.retrieval.embedding import FilesDone
from prodsearch.retrieval.encoders import ModelSource, create_encoder
from prodsearch.retrieval.runtime import Encoder
from prodsearch.retrieval.views import check_views

log = logging.getLogger(__name__)


@dataclass
class BuildReport:
    index_dir: Path
    skus: int
    images: int
    duplicates: list[Duplicate] = field(default_factory=list)  # same file twice in one SKU: stored once
    shared_across_skus: int = 0  # files whose bytes appear under more than one SKU
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0
    embed_seconds: float = 0.0
    views: int = 1  # views each photo was embedded as (the index's setting)

    @property
    def images_per_second(self) -> float:
        return self.images / self.embed_seconds if self.embed_seconds > 0 else 0.0


def build_index(
    catalog: str | os.PathLike,
    index_dir: str | os.PathLike,
    *,
    model: ModelSource | None = None,
    index_type: str = "auto",
    batch_size: int | None = None,
    runtime: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    num_workers: int | None = None,
    progress: FilesDone | None = None,
    wait: float = 0.0,
    views: int | None = None,
) -> BuildReport:
    """Index every readable image of ``catalog`` into ``index_dir``.

    An existing index there is rebuilt from the catalog with its own model (``model``, if given,
    must be that one: an index built with another model is refused rather than silently replaced);
    a new one is built with ``model`` (a name, a checkpoint or ONNX file, an embedder or encoder) or
    the default model. ``runtime`` ``auto`` embeds with ONNX Runtime on the CPU, torch on a GPU;
    either way the index keeps its model exported to ONNX, for queries without torch.

    ``views`` (1 to ``MAX_VIEWS``; a new index's default 1) embeds every photo as the mean of that
    many fixed views (:mod:`prodsearch.retrieval.views`): the index keeps it, and its queries and
    additions are embedded alike. A rebuild keeps the index's own and refuses another.
    """
    start = time.perf_counter()
    index_dir = Path(index_dir)
    if views is not None:
        check_views(views)
    check_target(index_dir)
    existing, unreadable = _existing_index(index_dir)
    if existing is not None:
        _check_same_views(index_dir, existing.views, views)
    views = existing.views if existing is not None else views or 1
    # Where it cannot write, it says so before the slow work (loading the model, embedding).
    writer = IndexWriter(index_dir, "index", wait=wait) if existing is not None else None
    if existing is None:
        check_can_create(index_dir)
    listing = read_listing(catalog)
    options = {"runtime": runtime, "device": device, "precision": precision}
    encoder = (encoder_for(existing, index_dir, model=model, check=False, **options) if existing
               else create_encoder(model or DEFAULT_MODEL, calibration=[it.path for it in listing.items], **options))
    resolve_index_type(index_type, len(listing.items), encoder.config.embed_dim)  # a bad type fails before embedding
    if existing is not None:
        _check_same_model(index_dir, existing.model, encoder.config)
        _check_same_index_type(index_dir, existing.index_factory, index_type)
    scanned = scan(listing)
    embedded = embed_new(encoder, scanned, list(scanned.files), batch_size=batch_size, num_workers=num_workers,
                         progress=progress, views=views)
    skipped = scanned.skipped + embedded.skipped
    if not embedded.images:
        raise nothing_readable(catalog, len(listing.items), skipped)
    products = product_rows([scanned.files[(img["sku"], img["md5"])] for img in embedded.images])
    if writer is not None:
        dim = existing.model.embed_dim
        factory = (index_type if index_type != "auto"
                   else resize_index_type(existing.index_requested, existing.index_factory, len(embedded.images), dim))
        _replace(writer, products, embedded, factory)
    else:
        manifest = Manifest(encoder.config, "", str(listing.source), views=views)
        create_index_dir(index_dir, manifest, products, embedded.images, embedded.vectors, index_type,
                         replace=unreadable, encoder=encoder)
    report = BuildReport(index_dir, len(products), len(embedded.images), scanned.duplicates,
                         scanned.shared_across_skus, skipped, time.perf_counter() - start, embedded.seconds, views)
    log.info("indexed %d images of %d SKUs into %s", report.images, report.skus, index_dir)
    return report


def _existing_index(index_dir: Path) -> tuple[Manifest | None, bool]:
    """(the manifest of a readable index there, whether an unreadable one is there). An index this
    prodsearch cannot read (older format, damaged manifest, missing database) is replaced whole by
    the new build: that is what its error message tells the user to do; a folder that is not
    provably an index is refused instead (see :func:`check_replaceable`)."""
    if not is_index_dir(index_dir):
        return None, False
    try:
        manifest = read_manifest(index_dir)
        _check_catalog(index_dir / CATALOG_DB)
        return manifest, False
    except (ReadOnlyIndexError, NewerFormatError):  # not damaged: readable elsewhere, or by a newer prodsearch
        raise
    except IndexDirError as exc:
        check_replaceable(index_dir, str(exc).split(";")[0])
        log.warning("replacing the unreadable index at %s: %s", index_dir, exc)
        return None, True


def _check_catalog(path: Path) -> None:
    """Raise :class:`IndexDirError` if the catalog database is damaged anywhere (a rebuild in place
    would fail on it; it is replaced instead)."""
    db = CatalogDB(path)
    with closing(db), db.guarded():
        problem = db.integrity_problem()
    if problem:
        raise IndexDirError(f"{path} is damaged ({problem})")


def _check_same_index_type(index_dir: Path, built: str, index_type: str) -> None:
    if index_type not in ("auto", built):
        raise IndexTypeError(f"{index_dir} holds a {built} index and a rebuild in place keeps its type; to build "
                             f"a {index_type} index, remove the folder or choose another --index")


def _check_same_views(index_dir: Path, built: int, views: int | None) -> None:
    """A rebuild keeps the views its queries are embedded with: another number would change every
    vector's meaning, which is a new index, not a rebuild."""
    if views not in (None, built):
        raise IndexDirError(
            f"{index_dir} holds an index built with --views {built}; a rebuild in place keeps its views: leave out "
            f"--views to rebuild with {built}, or remove the folder or choose another --index to build one with "
            f"--views {views}")


def _check_same_model(index_dir: Path, built: EmbedderConfig, config: EmbedderConfig) -> None:
    diffs = model_differences(built.identity(), config.identity())
    if diffs:
        fields = ", ".join(key for key, _, _ in diffs)
        raise IndexDirError(
            f"{index_dir} holds an index built with model {built.label}; 'index' rebuilds an index only with the "
            f"same model, and {config.label} differs in {fields}: leave out --model to rebuild with the index's own, "
            "or remove the folder or choose another --index")


def _replace(writer: IndexWriter, products: list[dict], embedded: Embedded, factory: str) -> None:
    """Every row replaced in one transaction, then the vector index built afresh as ``factory``
    (trained on the new vectors: an IVF index keeps no centroids of a catalog that is gone)."""
    with writer:
        old_ids = [row["id"] for row in writer.db.image_rows()]
        writer.commit(products=products, images=embedded.images, vectors=embedded.vectors, remove=old_ids,
                      rebuild_as=factory)
    log.info("rebuilt the index at %s in place as %s", writer.index_dir, factory)


def create_index_dir(
    index_dir: str | os.PathLike,
    manifest: Manifest,
    products: list[dict],
    images: list[dict],
    vectors: np.ndarray,
    index_type: str = "auto",
    *,
    replace: bool = False,
    encoder: Encoder | None = None,
) -> None:
    """Write a complete new index folder (row i of ``vectors`` belongs to ``images[i]``), assembled
    beside ``index_dir`` and renamed into place (``replace``: in place of an unreadable one), with
    the ONNX export of ``encoder`` if it carries one."""
    index_dir = Path(index_dir)
    staged = staging_dir(index_dir)
    try:
        with WriterLock(staged, "index"):  # a build that dies leaves it unlocked: see remove_stale_staging
            db = CatalogDB(staged / CATALOG_DB, create=True)
            with db.transaction():
                db.upsert_products(products)
                db.add_images(images, vectors, generation=1)
                db.set_generation(1)
            factory = resolve_index_type(index_type, len(images), manifest.model.embed_dim)
            index = rebuild_vectors(db, manifest.model.embed_dim, factory)
            write_vector_index(index, snapshot_path(staged, 1))
            with db.transaction():
                db.mark_snapshot(1)
            db.close()
            write_manifest(staged, Manifest(manifest.model, index_type_name(index), manifest.catalog_source,
                                            index_factory=factory, index_requested=index_type, views=manifest.views))
            if encoder is not None:
                keep_model(staged, encoder)
            crash_point("build-staged")
            (publish_replacing if replace else publish_new)(staged, index_dir)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
