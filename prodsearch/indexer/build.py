"""``index``: build an index folder from a catalog, or rebuild an existing one in place.

A new folder is assembled in chunks beside its destination (:mod:`.chunked`: bounded memory, a
stopped build resumes) and renamed into place. An existing index is rebuilt under the writer lock
in one transaction: readers see the old catalog until the new one is complete.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prodsearch.errors import IndexDirError, IndexTypeError, ProdsearchError, ReadOnlyIndexError
from prodsearch.indexer.catalog_db import CatalogDB
from prodsearch.failpoints import crash_point
from prodsearch.indexer.chunked import Chunked, embed_in_chunks, open_partial, partial_dir
from prodsearch.indexer.ingest import Duplicate, Embedded, Scan, embed_new, nothing_readable, product_rows, scan
from prodsearch.indexer.lock import WriterLock
from prodsearch.indexer.manifest import (Manifest, NewerFormatError, check_replaceable, check_target, is_index_dir,
                                         model_differences, read_manifest, write_manifest)
from prodsearch.indexer.models import encoder_for, keep_model
from prodsearch.indexer.precision_check import Measured, PrecisionCheck, measure_int8, reusing, sample_spread
from prodsearch.indexer.publish import (check_can_create, publish_new, publish_replacing, remove_stale_staging,
                                       staging_dir)
from prodsearch.catalog.listing import Skipped, read_listing
from prodsearch.indexer.store import CATALOG_DB, EMBEDDING_DIR, rebuild_vectors, snapshot_path
from prodsearch.indexer.index_types import resize_index_type, resolve_index_type
from prodsearch.indexer.milvus_types import milvus_index_spec
from prodsearch.indexer.vector_store import MilvusTarget, milvus_target
from prodsearch.indexer.vectors import index_type_name, write_vector_index
from prodsearch.indexer.writer import IndexWriter
from prodsearch.choices import CHUNK_PHOTOS, DEFAULT_MODEL
from prodsearch.retrieval.comparison import INDEX_ADVICE, stored_comparison
from prodsearch.retrieval.config import EmbedderConfig
from prodsearch.retrieval.embedding import FilesDone
from prodsearch.retrieval.embedding_team import EmbeddingTeam, embedder_in, embeds_as_team
from prodsearch.retrieval.encoders import ModelSource, create_encoder
from prodsearch.retrieval.onnx_files import remove_models
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
    resumed: int = 0  # photos an interrupted build of the same index had committed: not embedded again
    precision_check: PrecisionCheck | None = None  # whether int8 kept the answers, where this build measured it

    @property
    def images_per_second(self) -> float:
        return (self.images - self.resumed) / self.embed_seconds if self.embed_seconds > 0 else 0.0


@embeds_as_team
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
    vector_store: str | None = None,
    milvus_uri: str | None = None,
    milvus_collection: str | None = None,
    chunk_size: int = CHUNK_PHOTOS,
    resume: bool = True,
    team: EmbeddingTeam | None = None,
) -> BuildReport | None:
    """Index every readable image of ``catalog`` into ``index_dir``.

    An existing index there is rebuilt from the catalog with its own model (``model``, if given,
    must be that one: an index built with another model is refused rather than silently replaced);
    a new one is built with ``model`` (a name, a checkpoint or ONNX file, an embedder or encoder) or
    the default model. ``runtime`` ``auto`` embeds with ONNX Runtime on the CPU, torch on a GPU;
    either way the index keeps its model exported to ONNX, for queries without torch.

    ``views`` (1 to ``MAX_VIEWS``; a new index's default 1) embeds every photo as the mean of that
    many fixed views (:mod:`prodsearch.retrieval.views`): the index keeps it, and its queries and
    additions are embedded alike. A rebuild keeps the index's own and refuses another.

    ``vector_store`` ``milvus`` keeps the vectors searched in a Milvus collection (``milvus_collection``
    at ``milvus_uri``: a server, or by default a Milvus Lite folder inside the index) instead of FAISS
    files; ``catalog.db`` holds them either way. A rebuild keeps the index's store.

    A new index is embedded and committed ``chunk_size`` photos at a time (:mod:`.chunked`): memory
    holds one chunk of vectors, and a build that was stopped resumes where it stopped unless
    ``resume`` is false. A rebuild in place replaces every row in one transaction (readers see the
    old catalog until the new one is whole), so its memory grows with the catalog.

    Where ``precision`` ``auto`` would embed in int8 (a CPU with VNNI or AMX), int8 is measured
    first on up to ``SAMPLE_PHOTOS`` of the catalog's photos (:mod:`.precision_check`): it is taken
    only where it changes at most ``MAX_INT8_CHANGED`` of fp32's top-1 answers, else the index is
    embedded in fp32 and keeps no int8 model; ``int8`` asked for by name is measured and obeyed. The
    manifest records the measurement (``info`` shows it); a rebuild measures again, ``add`` and
    ``update`` keep the choice.

    Under torchrun every process embeds its share of each chunk (``team``, given by
    :func:`embeds_as_team`); rank 0 returns the report, the others None.
    """
    start = time.perf_counter()
    index_dir = Path(index_dir)
    if views is not None:
        check_views(views)
    check_target(index_dir)
    existing, unreadable = _existing_index(index_dir)
    if existing is not None:
        _check_same_views(index_dir, existing.views, views)
        _check_same_store(index_dir, existing, vector_store, milvus_uri, milvus_collection)
    views = existing.views if existing is not None else views or 1
    milvus = (milvus_target(milvus_uri, milvus_collection)
              if existing is None and (vector_store == "milvus" or milvus_uri or milvus_collection) else None)
    if milvus is not None and not milvus.is_lite:
        _check_collection_free(milvus, index_dir)
    # Where it cannot write, it says so before the slow work (loading the model, embedding).
    writer = IndexWriter(index_dir, "index", wait=wait) if existing is not None else None
    if existing is None:
        check_can_create(index_dir)
    listing = read_listing(catalog)
    options = {"runtime": runtime, "device": device, "precision": precision}
    photos = [it.path for it in listing.items]
    encoder = (encoder_for(existing, index_dir, model=model, check=False, calibration=photos, **options) if existing
               else create_encoder(model or DEFAULT_MODEL, calibration=photos, **options))
    del photos
    warn_if_not_better(model)
    # a bad type fails before embedding
    store = existing.milvus if existing is not None else milvus
    if store is not None:
        milvus_index_spec(index_type, len(listing.items), encoder.config.embed_dim, lite=store.is_lite)
    else:
        resolve_index_type(index_type, len(listing.items), encoder.config.embed_dim)
    if existing is not None:
        _check_same_model(index_dir, existing.model, encoder.config)
        _check_same_index_type(index_dir, existing.index_factory, index_type)
    scanned = scan(listing)
    encoder, measured = _checked_precision(encoder, precision, scanned, views, num_workers)
    if writer is None:
        manifest = Manifest(encoder.config, "", str(listing.source), views=views, milvus=milvus,
                            precision_check=None if measured is None else measured.check)
        files = len(listing.items)
        del listing  # a million listed photos hold about 1 GB; the scan keeps what the build needs
        built = _build_new(scanned, index_dir, manifest, encoder, index_type, replace=unreadable, catalog=catalog,
                           files=files, chunk_size=chunk_size, resume=resume, team=team, measured=measured,
                           batch_size=batch_size, num_workers=num_workers, progress=progress)
        report = BuildReport(index_dir, built.skus, built.images, scanned.duplicates, scanned.shared_across_skus,
                             scanned.skipped + built.skipped, time.perf_counter() - start, built.embed_seconds, views,
                             built.resumed, manifest.precision_check)
        log.info("indexed %d images of %d SKUs into %s", report.images, report.skus, index_dir)
        return report
    embedded = embed_new(encoder, scanned, list(scanned.files), batch_size=batch_size, num_workers=num_workers,
                         progress=progress, views=views,
                         embed_with=reusing(measured, embedder_in(team, index_dir / EMBEDDING_DIR)))
    skipped = scanned.skipped + embedded.skipped
    if not embedded.images:
        raise nothing_readable(catalog, len(listing.items), skipped)
    products = product_rows([scanned.files[(img["sku"], img["md5"])] for img in embedded.images])
    dim = existing.model.embed_dim
    if existing.milvus is not None:  # sized again for the new catalog, as an IVF FAISS index is
        factory = milvus_index_spec(existing.index_requested if index_type == "auto" else index_type,
                                    len(embedded.images), dim, lite=existing.milvus.is_lite)
    else:
        factory = (index_type if index_type != "auto"
                   else resize_index_type(existing.index_requested, existing.index_factory, len(embedded.images), dim))
    _replace(writer, products, embedded, factory, measured)
    report = BuildReport(index_dir, len(products), len(embedded.images), scanned.duplicates,
                         scanned.shared_across_skus, skipped, time.perf_counter() - start, embedded.seconds, views,
                         precision_check=None if measured is None else measured.check)
    log.info("indexed %d images of %d SKUs into %s", report.images, report.skus, index_dir)
    return report


def warn_if_not_better(model: ModelSource | None) -> None:
    """A trained checkpoint that its training found worse than the untrained embedder it started
    from is indexed as asked, with a warning (both numbers); other models, and checkpoints that
    hold no comparison (written before train compared), pass in silence."""
    comparison = stored_comparison(model)
    warning = comparison.not_better(f"the model {model}", INDEX_ADVICE) if comparison is not None else None
    if warning:
        log.warning("%s", warning)


def _checked_precision(encoder: Encoder, precision: str, scanned: Scan, views: int,
                       num_workers: int | None) -> tuple[Encoder, Measured | None]:
    """The encoder to embed the catalog with, and the int8 check where one was made: an int8 model
    made here beside its fp32 one (``auto`` on a CPU that runs int8 fast, or int8 asked for) is
    measured on photos spread over the catalog, and ``auto`` falls back to fp32 where it fails."""
    fp32 = getattr(encoder, "fp32", None)
    if encoder.precision != "int8" or fp32 is None or precision not in ("auto", "int8"):
        return encoder, None
    keys = list(scanned.files)
    sample = [keys[i] for i in sample_spread(len(keys))]
    measured = measure_int8(fp32, encoder, [scanned.files[key].path for key in sample], [sku for sku, _ in sample],
                            asked=precision, views=views, num_workers=num_workers)
    return (encoder if measured.check.chosen == "int8" else fp32), measured


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


def _check_same_store(index_dir: Path, existing: Manifest, store: str | None, uri: str | None,
                      collection: str | None) -> None:
    """A rebuild in place keeps where the vectors live; moving them is a new index."""
    asked = ("milvus" if uri or collection else store) or existing.store
    target = existing.milvus
    if asked != existing.store or (target is not None and (uri not in (None, target.uri)
                                                           or collection not in (None, target.collection))):
        where = "FAISS files" if target is None else str(target)
        raise IndexDirError(f"{index_dir} keeps its vectors in {where}, and a rebuild in place keeps them there: leave "
                            "out --vector-store/--milvus-uri/--milvus-collection, or remove the folder or choose "
                            "another --index")


def _check_collection_free(target: MilvusTarget, index_dir: Path) -> None:
    """A new index never takes over a server collection that exists (another index's, or data of
    someone else): said before any embedding."""
    from prodsearch.indexer.milvus import MilvusStore

    with MilvusStore.open(target, index_dir, dim=0) as store:
        if store.exists():
            raise IndexDirError(f"the collection {target.collection} already exists at {target.uri}; choose another "
                                "--milvus-collection (or drop that one if it is an old index's)")


def _check_same_model(index_dir: Path, built: EmbedderConfig, config: EmbedderConfig) -> None:
    diffs = model_differences(built.identity(), config.identity())
    if diffs:
        fields = ", ".join(key for key, _, _ in diffs)
        raise IndexDirError(
            f"{index_dir} holds an index built with model {built.label}; 'index' rebuilds an index only with the "
            f"same model, and {config.label} differs in {fields}: leave out --model to rebuild with the index's own, "
            "or remove the folder or choose another --index")


def _replace(writer: IndexWriter, products: list[dict], embedded: Embedded, factory: str,
             measured: Measured | None = None) -> None:
    """Every row replaced in one transaction, then the vector index built afresh as ``factory``
    (trained on the new vectors: an IVF index keeps no centroids of a catalog that is gone), and
    the int8 check measured again recorded (an int8 model it refused removed)."""
    with writer:
        old_ids = [row["id"] for row in writer.db.image_rows()]
        if measured is not None:
            writer.manifest = dataclasses.replace(writer.manifest, precision_check=measured.check)
        writer.commit(products=products, images=embedded.images, vectors=embedded.vectors, remove=old_ids,
                      rebuild_as=factory)
        if measured is not None:
            write_manifest(writer.index_dir, writer.manifest)
            if measured.check.chosen == "fp32":
                remove_models(writer.index_dir, "int8")
    log.info("rebuilt the index at %s in place as %s", writer.index_dir, factory)


def _build_new(scanned: Scan, index_dir: Path, manifest: Manifest, encoder: Encoder, index_type: str, *,
               replace: bool, catalog, files: int, chunk_size: int, resume: bool, team: EmbeddingTeam | None,
               measured: Measured | None = None, **embed) -> Chunked:
    """A new index folder, embedded in chunks into a partial build (resumed if one was stopped),
    finished and renamed into place (``replace``: in place of an unreadable one); the photos the
    int8 check embedded (``measured``) are not embedded again."""
    staged = partial_dir(index_dir, manifest, index_type)
    remove_stale_staging(index_dir)  # what a killed build of the older kind or a replacing publish left
    open_partial(index_dir, staged, resume)
    with WriterLock(staged, "index"):
        built = embed_in_chunks(scanned, staged, encoder, views=manifest.views, chunk_size=chunk_size,
                                embed_with=reusing(measured, embedder_in(team, staged / EMBEDDING_DIR)), **embed)
        scanned.files.clear()  # spent: the vector index is built from the database, without the listing beside it
        scanned.info.clear()
        try:
            if not built.images:
                raise nothing_readable(catalog, files, scanned.skipped + built.skipped)
            with built.db.transaction():
                built.db.set_generation(1)
            finish_staged(staged, built.db, manifest, index_type, built.images, encoder)
        except ProdsearchError:
            built.db.close()
            shutil.rmtree(staged, ignore_errors=True)  # nothing readable, a type that cannot be built: not resumable
            raise
        built.db.close()
        (publish_replacing if replace else publish_new)(staged, index_dir)
    return built


def finish_staged(staged: Path, db: CatalogDB, manifest: Manifest, index_type: str, count: int,
                  encoder: Encoder | None) -> None:
    """Complete a staged folder whose catalog holds generation 1: its vector store (a FAISS snapshot,
    or a Milvus collection), its manifest, its model."""
    if manifest.milvus is not None:
        factory, type_name = _fill_milvus(db, staged, manifest, index_type, count)
    else:
        factory = resolve_index_type(index_type, count, manifest.model.embed_dim)
        index = rebuild_vectors(db, manifest.model.embed_dim, factory)
        write_vector_index(index, snapshot_path(staged, 1))
        with db.transaction():
            db.mark_snapshot(1)
        type_name = index_type_name(index)
    write_manifest(staged, dataclasses.replace(manifest, index_type=type_name, index_factory=factory,
                                               index_requested=index_type))
    if encoder is not None:
        keep_model(staged, encoder)
    crash_point("build-staged")


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
            finish_staged(staged, db, manifest, index_type, len(images), encoder)
            db.close()
            (publish_replacing if replace else publish_new)(staged, index_dir)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


def _fill_milvus(db: CatalogDB, staged: Path, manifest: Manifest, index_type: str, count: int) -> tuple[str, str]:
    """Create the new index's collection and write every vector into it; (its spec, its type)."""
    from prodsearch.indexer.milvus import MilvusStore, catch_up  # pymilvus: only for such an index

    dim, target = manifest.model.embed_dim, manifest.milvus
    spec = milvus_index_spec(index_type, count, dim, lite=target.is_lite)
    with MilvusStore.open(target, staged, dim) as store:
        try:
            catch_up(db, store, spec)
        except BaseException:
            if not target.is_lite:  # a server keeps what a failed build created; the staged Lite folder goes with it
                store.drop()
            raise
    return spec, spec.split(":")[0]
