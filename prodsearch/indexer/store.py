"""An index folder's storage: the catalog database and the FAISS snapshots derived from it.

``catalog.db`` holds every image and its vector (the truth); ``vectors-<generation>.faiss`` is a
FAISS index of the vectors as they were at some generation. Opening an index loads the newest
snapshot and applies the changes logged since (adds from the stored vectors, removals with
``remove_ids`` or, for index types that cannot delete, a rebuild from the stored vectors). A writer
therefore never has to rewrite the whole vector index to add or remove a few images: it commits one
SQLite transaction and writes a fresh snapshot only once the log has grown (compaction).

Crash safety follows: a write is committed by SQLite or not at all; a snapshot file appears by
atomic rename or not at all; any file a crash leaves behind is unreferenced and removed by the next
writer.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import faiss
import numpy as np

from prodsearch.indexer.catalog_db import CatalogDB
from prodsearch.failpoints import crash_point
from prodsearch.indexer.index_types import train_index, training_rows
from prodsearch.indexer.vectors import (add_vectors, create_vector_index, read_vector_index, remove_vectors,
                                        write_vector_index)

log = logging.getLogger(__name__)

# Where the processes of a torchrun run write their shares of a chunk (inside an index, or a new
# index's partial folder), until rank 0 has read them.
EMBEDDING_DIR = ".embedding"
CATALOG_DB = "catalog.db"
SNAPSHOT_PATTERN = re.compile(r"^vectors-(\d{8})\.faiss$")
# Write a new snapshot once this many changes are logged, or a tenth of the index if more
# (PRODSEARCH_SNAPSHOT_CHANGES overrides the minimum).
MIN_SNAPSHOT_CHANGES = 1000


def snapshot_path(index_dir: Path, generation: int) -> Path:
    return index_dir / f"vectors-{generation:08d}.faiss"


def load_vectors(index_dir: Path, db: CatalogDB, dim: int, index_type: str = "auto") -> faiss.Index:
    """The FAISS index of the generation ``db`` currently sees (call inside its read snapshot).
    An index type that cannot delete is rebuilt as ``index_type`` when images were removed."""
    state = db.state()
    index = read_vector_index(snapshot_path(index_dir, state.snapshot))
    added, removed = db.changes_since(state.snapshot)
    if removed and not remove_vectors(index, np.array(removed)):
        return rebuild_vectors(db, dim, index_type)
    if added:
        add_vectors(index, db.vectors(added, dim), np.array(added))
    return index


def rebuild_vectors(db: CatalogDB, dim: int, index_type: str = "auto", seed: int = 0) -> faiss.Index:
    """A fresh index of every stored vector, streamed: IVF / PQ types are trained on a random sample
    read by id, then vectors are added chunk by chunk, so memory holds the index and one chunk."""
    ids = db.vector_ids()
    index = create_vector_index(dim, len(ids), index_type)
    if not index.is_trained:
        train_index(index, sampled_vectors(db, ids[training_rows(index, len(ids), seed)], dim))
    for chunk_ids, vectors in db.vector_chunks(dim):
        add_vectors(index, vectors, chunk_ids)
    return index


def sampled_vectors(db: CatalogDB, ids: np.ndarray, dim: int) -> np.ndarray:
    """The stored vectors of ``ids`` (sorted), gathered from one streamed pass into one float32 array:
    a training sample of 262k vectors without a dictionary of their blobs beside it."""
    out, filled = np.empty((len(ids), dim), dtype=np.float32), 0
    for chunk_ids, vectors in db.vector_chunks(dim):
        keep = np.isin(chunk_ids, ids)
        out[filled:filled + int(keep.sum())] = vectors[keep]
        filled += int(keep.sum())
    return out[:filled]


def needs_snapshot(db: CatalogDB, vector_count: int) -> bool:
    pending = db.pending_changes()
    minimum = int(os.environ.get("PRODSEARCH_SNAPSHOT_CHANGES", MIN_SNAPSHOT_CHANGES))
    return pending >= max(minimum, vector_count // 10)


def write_snapshot(index_dir: Path, db: CatalogDB, index: faiss.Index) -> None:
    """Persist ``index`` as the snapshot of the current generation, then forget the older ones."""
    generation = db.state().generation
    write_vector_index(index, snapshot_path(index_dir, generation))
    fsync_dir(index_dir)
    crash_point("snapshot-written")
    with db.transaction():
        db.mark_snapshot(generation)
    remove_stale_files(index_dir, keep=generation)


def remove_stale_files(index_dir: Path, keep: int) -> None:
    """Delete snapshots other than ``keep`` and temporary files a crashed writer left."""
    for path in index_dir.iterdir():
        match = SNAPSHOT_PATTERN.match(path.name)
        if (match and int(match.group(1)) != keep) or ".tmp-" in path.name:
            path.unlink(missing_ok=True)
            log.debug("removed stale %s", path.name)


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
