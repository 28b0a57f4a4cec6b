"""A new index built in chunks: memory bounded by a chunk, and a build that was stopped resumes.

``index`` into a new folder embeds :data:`CHUNK_PHOTOS` photos at a time and commits each chunk to
the catalog database of a partial build beside the destination (``.NAME.partial-<digest>``, under
the writer lock), so it never holds more than one chunk of vectors. Once every chunk is in, the
vector store is filled from the database (streamed) and the folder is renamed into place whole.

A build that dies (killed, out of disk, Ctrl-C) leaves its partial folder; the next ``index`` of the
same catalog into the same folder with the same model, views, store and index type (the digest)
resumes it: committed photos are never embedded again, photos the catalog no longer lists are
dropped. ``resume=False`` (``index --no-resume``) starts over.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from prodsearch.catalog.listing import Skipped
from prodsearch.choices import CHUNK_PHOTOS  # 256 MB of float32 vectors a chunk at d = 1280
from prodsearch.errors import IndexDirError
from prodsearch.indexer.catalog_db import CatalogDB
from prodsearch.failpoints import crash_point
from prodsearch.indexer.ingest import Scan, embed_new, scanned_products
from prodsearch.indexer.lock import lock_is_held
from prodsearch.indexer.manifest import Manifest
from prodsearch.indexer.publish import glob_escape
from prodsearch.indexer.store import CATALOG_DB
from prodsearch.retrieval.embedding import EmbedFiles, FilesDone, embed_files
from prodsearch.retrieval.runtime import Encoder

log = logging.getLogger(__name__)


@dataclass
class Chunked:
    """What a chunked build committed: the partial folder ready to finish and publish."""

    staged: Path
    db: CatalogDB
    images: int = 0
    skus: int = 0
    resumed: int = 0  # photos an earlier, interrupted build had committed: not embedded again
    skipped: list[Skipped] = field(default_factory=list)
    embed_seconds: float = 0.0


def partial_dir(index_dir: Path, manifest: Manifest, index_type: str) -> Path:
    """The partial build folder of this build: its name carries a digest of what makes two builds
    the same one (model, views, store, index type, catalog), so only the same build resumes it."""
    what = {"model": manifest.model.identity(), "views": manifest.views, "catalog": manifest.catalog_source,
            "store": None if manifest.milvus is None else manifest.milvus.to_dict(), "index_type": index_type}
    digest = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return index_dir.parent / f".{index_dir.name}.partial-{digest}"


def open_partial(index_dir: Path, staged: Path, resume: bool) -> bool:
    """Create or reopen ``staged``; partial builds of other settings that nobody runs are removed
    (they can never be resumed by this one). Returns whether an earlier build is resumed."""
    for other in index_dir.parent.glob(f".{glob_escape(index_dir.name)}.partial-*"):
        if (other != staged or not resume) and other.is_dir() and lock_is_held(other) is not True:
            shutil.rmtree(other, ignore_errors=True)
            log.info("removed %s, an interrupted build %s", other, "of other settings" if other != staged else "(--no-resume)")
    resumed = (staged / CATALOG_DB).is_file()
    if resumed:
        try:  # a build killed while it created its database leaves one that cannot be resumed
            CatalogDB(staged / CATALOG_DB).close()
        except (IndexDirError, OSError):
            shutil.rmtree(staged, ignore_errors=True)
            resumed = False
    staged.mkdir(parents=True, exist_ok=True)
    return resumed


def embed_in_chunks(scanned: Scan, staged: Path, encoder: Encoder, *, views: int,
                    chunk_size: int = CHUNK_PHOTOS, batch_size: int | None = None, num_workers: int | None = None,
                    progress: FilesDone | None = None, embed_with: EmbedFiles = embed_files) -> Chunked:
    """Embed what ``staged``'s database lacks of ``scanned``, a chunk per transaction (call under
    the partial folder's writer lock). The database is left open in the result."""
    path = staged / CATALOG_DB
    db = CatalogDB(path, create=not path.is_file(), write=True)
    try:
        return _embed_in_chunks(Chunked(staged, db), scanned, encoder, views, chunk_size, progress,
                                batch_size=batch_size, num_workers=num_workers, embed_with=embed_with)
    except BaseException:
        db.close()
        raise


def _embed_in_chunks(result: Chunked, scanned: Scan, encoder: Encoder, views: int, chunk_size: int,
                     progress: FilesDone | None, **embed) -> Chunked:
    db = result.db
    with db.transaction():  # what the catalog no longer lists (or lists under other content) goes
        stale = [i for i, _, _ in db.images_not_in(scanned.files)]
        if stale:
            db.remove_images(stale, generation=1)
            db.remove_orphan_products()
    done = db.image_keys()
    result.resumed = len(done)
    if done:
        log.info("resuming an interrupted build: %d photos committed already are not embedded again", len(done))
    todo = [key for key in scanned.files if key not in done]
    products = scanned_products(scanned)
    for start in range(0, len(todo), chunk_size):
        keys = todo[start:start + chunk_size]
        offset = chunk_progress(progress, start, len(todo))
        embedded = embed_new(encoder, scanned, keys, progress=offset, views=views, **embed)
        result.skipped += embedded.skipped
        result.embed_seconds += embedded.seconds
        with db.transaction():
            db.upsert_products([products[s] for s in sorted({img["sku"] for img in embedded.images})])
            if embedded.images:
                db.add_images(embedded.images, embedded.vectors, generation=1)
        log.info("committed %d of %d photos to embed", min(start + chunk_size, len(todo)), len(todo))
        crash_point("build-chunk")
    with db.transaction():  # names and categories as the catalog says now, also of SKUs a resumed build wrote
        db.upsert_products(products.values())
        db.remove_orphan_products()
    counts = db.counts()
    result.images, result.skus = counts["images"], counts["products"]
    return result


def chunk_progress(progress: FilesDone | None, before: int, total: int) -> FilesDone | None:
    """One progress count over every chunk (each chunk's embedding counts from 0)."""
    if progress is None:
        return None
    return lambda done, _: progress(before + done, total)
