"""Exclusive, crash-safe writes to an index folder.

``with IndexWriter(index_dir, "add") as w: w.commit(...)`` takes the writer lock, applies all
changes in one SQLite transaction (catalog rows, vectors and the change log together), and writes
a new FAISS snapshot when the log has grown long enough, or, for an index whose vectors live in
Milvus, replays the change log into the collection (:func:`~prodsearch.indexer.milvus.catch_up`).
Readers never wait for it. What killed or refused writes left (uploads no image has, a torchrun
run's chunk files) is removed on the way out (:mod:`.leftovers`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from prodsearch.errors import IndexDirError, ReadOnlyIndexError
from prodsearch.indexer import leftovers
from prodsearch.indexer.catalog_db import CatalogDB, catalog_writable
from prodsearch.failpoints import crash_point
from prodsearch.indexer.index_types import deletes_in_place
from prodsearch.indexer.lock import WriterLock
from prodsearch.indexer.manifest import Manifest, read_manifest, write_manifest
from prodsearch.indexer.store import (CATALOG_DB, load_vectors, needs_snapshot, rebuild_vectors, remove_stale_files,
                                     write_snapshot)
from prodsearch.indexer.vectors import index_type_name

log = logging.getLogger(__name__)


@dataclass
class Commit:
    generation: int
    added_ids: list[int] = field(default_factory=list)
    removed_skus: list[str] = field(default_factory=list)


def check_writable(index_dir: Path) -> None:
    """Raise :class:`ReadOnlyIndexError` unless this process can write the index folder and its
    catalog: every writer asks before it does any work or stores any file."""
    if not catalog_writable(index_dir / CATALOG_DB):
        raise ReadOnlyIndexError(index_dir, f"this user cannot write the folder or its {CATALOG_DB}")


class IndexWriter:
    """The writer lock and a read-write catalog connection for the duration of a ``with`` block;
    files a crashed writer left are cleared on entry (snapshots, temporary files) and on exit
    (uploads no image has; after a block that succeeded, torchrun chunk files too)."""

    def __init__(self, index_dir: str | os.PathLike, command: str, *, wait: float = 0.0):
        """Check that the index can be written (before any slow work: loading a model, embedding)."""
        self.index_dir = Path(index_dir)
        self.lock = WriterLock(self.index_dir, command, wait)
        self.manifest: Manifest = read_manifest(self.index_dir)
        check_writable(self.index_dir)
        self.db: CatalogDB | None = None
        self.milvus = None  # the Milvus collection of an index that keeps its vectors there

    def __enter__(self) -> "IndexWriter":
        self.lock.__enter__()
        try:
            self.db = CatalogDB(self.index_dir / CATALOG_DB, write=True)
            with self.db.guarded():
                self.db.adopt_uploads()
            remove_stale_files(self.index_dir, keep=self.db.state().snapshot)
            if self.manifest.milvus is not None:  # what a killed writer left unwritten is replayed first
                from prodsearch.indexer.milvus import MilvusStore, catch_up  # pymilvus: only for such an index

                self.milvus = MilvusStore.open(self.manifest.milvus, self.index_dir, self.manifest.model.embed_dim)
                catch_up(self.db, self.milvus, self.manifest.index_factory)
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.db is not None:
                with self.db.guarded():  # SQLite's report of a damaged file becomes IndexDirError
                    if exc[1] is not None:
                        raise exc[1]
        finally:
            try:
                self._clear_leftovers(succeeded=exc[1] is None)
            finally:
                self._close()

    def _clear_leftovers(self, succeeded: bool) -> None:
        """Uploads no image has go (a refused upload's too); chunk files only after a block that
        succeeded (a torchrun run started again resumes from them)."""
        if self.db is None:
            return
        try:
            with self.db.guarded():
                self.db.end_snapshot()
                leftovers.remove(self.index_dir, self.db, chunks=succeeded)
        except (OSError, IndexDirError) as exc:  # the write's outcome stands; the next write tries again
            log.warning("could not remove what earlier writes left in %s: %s", self.index_dir, exc)

    def _close(self) -> None:
        try:
            if self.milvus is not None:
                self.milvus.close()
                self.milvus = None
            if self.db is not None:
                self.db.close()
        finally:
            self.lock.__exit__(None, None, None)

    def commit(self, *, products: Iterable[dict] = (), images: list[dict] | None = None,
               vectors: np.ndarray | None = None, remove: Iterable[int] = (), moved: dict[int, str] | None = None,
               rebuild_as: str | None = None, settings: dict[str, dict | None] | None = None) -> Commit:
        """Apply removals, product upserts, new images and moved files' paths atomically, as the next
        generation; write a FAISS snapshot if the change log has grown long, or after a removal from
        an index type that cannot delete in place. ``rebuild_as``: write the snapshot as a fresh
        index of that factory string, trained on the vectors now stored. ``settings``: stored with
        the catalog (``None`` deletes one), in the same generation, so readers see them with it."""
        db = self.db
        crash_point("before-commit")
        with db.transaction():
            generation = db.state().generation + 1
            remove = list(remove)
            if remove:
                db.remove_images(remove, generation)
            products = list(products)
            if products:
                db.upsert_products(products, generation)
            added = db.add_images(images, vectors, generation) if images else []
            if moved:
                db.update_paths(moved)
            orphans = db.remove_orphan_products()
            for key, value in (settings or {}).items():
                db.set_setting(key, value)
            db.set_generation(generation)
            crash_point("inside-commit")
        crash_point("after-commit")
        if self.milvus is not None:
            self._write_milvus(rebuild_as)
        else:
            self._write_faiss(bool(remove), rebuild_as)
        log.info("generation %d: +%d images, -%d images", generation, len(added), len(remove))
        return Commit(generation, added, orphans)

    def _write_faiss(self, removed: bool, rebuild_as: str | None) -> None:
        """A FAISS snapshot when one is due: the log has grown long, or an index that cannot delete
        lost images (rebuilt once here, not by every reader that opens it)."""
        rebuild = removed and not deletes_in_place(self.manifest.index_factory)
        if rebuild_as is not None:
            self._rebuild(rebuild_as)
        elif rebuild or needs_snapshot(self.db, self.db.counts()["images"]):
            index = load_vectors(self.index_dir, self.db, self.manifest.model.embed_dim, self.manifest.index_factory)
            write_snapshot(self.index_dir, self.db, index)
            crash_point("after-snapshot")

    def _write_milvus(self, rebuild_as: str | None) -> None:
        from prodsearch.indexer.milvus import catch_up, rebuild

        if rebuild_as is None:
            catch_up(self.db, self.milvus, self.manifest.index_factory)
            return
        rebuild(self.db, self.milvus, rebuild_as)
        self._set_index_type(rebuild_as, rebuild_as.split(":")[0])

    def repair(self) -> str:
        """Bring the vector store level with the catalog whatever happened to it: every Milvus row
        compared and rewritten, or a fresh FAISS snapshot from the stored vectors. Says what it did."""
        if self.milvus is not None:
            from prodsearch.indexer.milvus import level

            written, deleted = level(self.db, self.milvus)
            return f"{self.manifest.milvus}: {written} rows written, {deleted} deleted"
        self._rebuild(self.manifest.index_factory)
        return f"FAISS snapshot of generation {self.db.state().generation} rewritten from the stored vectors"

    def _set_index_type(self, factory: str, type_name: str) -> None:
        if factory != self.manifest.index_factory:
            self.manifest = dataclasses.replace(self.manifest, index_type=type_name, index_factory=factory)
            write_manifest(self.index_dir, self.manifest)

    def _rebuild(self, factory: str) -> None:
        """A fresh snapshot of type ``factory``; the manifest follows once the snapshot is in place
        (a reader between the two reads a snapshot file whatever its type)."""
        index = rebuild_vectors(self.db, self.manifest.model.embed_dim, factory)
        write_snapshot(self.index_dir, self.db, index)
        crash_point("after-snapshot")
        self._set_index_type(factory, index_type_name(index))
