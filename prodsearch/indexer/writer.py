"""Exclusive, crash-safe writes to an index folder.

``with IndexWriter(index_dir, "add") as w: w.commit(...)`` takes the writer lock, applies all
changes in one SQLite transaction (catalog rows, vectors and the change log together), and writes
a new FAISS snapshot when the log has grown long enough. Readers never wait for it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from prodsearch.errors import ReadOnlyIndexError
from prodsearch.indexer.catalog_db import CatalogDB, catalog_writable
from prodsearch.indexer.failpoints import crash_point
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


class IndexWriter:
    """The writer lock and a read-write catalog connection for the duration of a ``with`` block;
    files a crashed writer left are cleared on entry."""

    def __init__(self, index_dir: str | os.PathLike, command: str, *, wait: float = 0.0):
        """Check that the index can be written (before any slow work: loading a model, embedding)."""
        self.index_dir = Path(index_dir)
        self.lock = WriterLock(self.index_dir, command, wait)
        self.manifest: Manifest = read_manifest(self.index_dir)
        if not catalog_writable(self.index_dir / CATALOG_DB):
            raise ReadOnlyIndexError(self.index_dir, f"this user cannot write the folder or its {CATALOG_DB}")
        self.db: CatalogDB | None = None

    def __enter__(self) -> "IndexWriter":
        self.lock.__enter__()
        try:
            self.db = CatalogDB(self.index_dir / CATALOG_DB, write=True)
            remove_stale_files(self.index_dir, keep=self.db.state().snapshot)
        except BaseException:
            self.lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.db is not None:
                with self.db.guarded():  # SQLite's report of a damaged file becomes IndexDirError
                    if exc[1] is not None:
                        raise exc[1]
        finally:
            if self.db is not None:
                self.db.close()
            self.lock.__exit__(*exc)

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
                db.upsert_products(products)
            added = db.add_images(images, vectors, generation) if images else []
            if moved:
                db.update_paths(moved)
            orphans = db.remove_orphan_products()
            for key, value in (settings or {}).items():
                db.set_setting(key, value)
            db.set_generation(generation)
            crash_point("inside-commit")
        crash_point("after-commit")
        count = db.counts()["images"]
        # An index that cannot delete is rebuilt once here, not by every reader that opens it.
        rebuild = bool(remove) and not deletes_in_place(self.manifest.index_factory)
        if rebuild_as is not None:
            self._rebuild(rebuild_as)
        elif rebuild or needs_snapshot(db, count):
            index = load_vectors(self.index_dir, db, self.manifest.model.embed_dim, self.manifest.index_factory)
            write_snapshot(self.index_dir, db, index)
            crash_point("after-snapshot")
        log.info("generation %d: +%d images, -%d images", generation, len(added), len(remove))
        return Commit(generation, added, orphans)

    def _rebuild(self, factory: str) -> None:
        """A fresh snapshot of type ``factory``; the manifest follows once the snapshot is in place
        (a reader between the two reads a snapshot file whatever its type)."""
        index = rebuild_vectors(self.db, self.manifest.model.embed_dim, factory)
        write_snapshot(self.index_dir, self.db, index)
        crash_point("after-snapshot")
        if factory != self.manifest.index_factory:
            self.manifest = dataclasses.replace(self.manifest, index_type=index_type_name(index), index_factory=factory)
            write_manifest(self.index_dir, self.manifest)
