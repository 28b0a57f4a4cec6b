"""What killed or refused writes leave in an index folder that nothing uses: uploaded photos no
image row has (a server killed between storing a photo and its commit, removed uploads), partial
uploads, and the chunk files of a torchrun run that did not finish. :class:`~.writer.IndexWriter`
removes them under the writer lock; ``info`` reports them."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from prodsearch.indexer import uploads
from prodsearch.indexer.catalog_db import CatalogDB
from prodsearch.indexer.store import EMBEDDING_DIR

log = logging.getLogger(__name__)


@dataclass
class Leftovers:
    uploads: list[Path] = field(default_factory=list)  # files in uploads/ whose content no image has
    chunk_files: list[Path] = field(default_factory=list)  # in .embedding/: shares of torchrun chunks

    def __bool__(self) -> bool:
        return bool(self.uploads or self.chunk_files)

    def to_dict(self) -> dict[str, int]:
        return {"uploads": len(self.uploads), "chunk_files": len(self.chunk_files)}

    def describe(self) -> str:
        return describe(self.to_dict())


def describe(counts: dict[str, int]) -> str:
    """:meth:`Leftovers.to_dict` in words (what ``info`` prints)."""
    words = {"uploads": "uploaded photo files no image uses",
             "chunk_files": f"chunk files of an unfinished torchrun run in {EMBEDDING_DIR}/"}
    return "; ".join(f"{n} {words[key]}" for key, n in counts.items() if n) or "none"


def find(index_dir: Path, db: CatalogDB, *, chunks: bool = True) -> Leftovers:
    """What :func:`remove` would delete (``chunks``: the torchrun chunk files too)."""
    stored = uploads.stored_files(index_dir)
    used = db.md5s_in_use(md5 for md5 in stored if md5)
    unused = [path for md5, paths in stored.items() if md5 not in used for path in paths]
    embedding = index_dir / EMBEDDING_DIR
    files = sorted(p for p in embedding.rglob("*") if p.is_file()) if chunks and embedding.is_dir() else []
    return Leftovers(unused, files)


def remove(index_dir: Path, db: CatalogDB, *, chunks: bool = True) -> Leftovers:
    """Delete what :func:`find` finds (under the writer lock: a writer stores uploads under it, and
    a torchrun run writes its chunk files under it). ``chunks=False`` keeps the chunk files, which a
    torchrun run started again resumes from: only a write that succeeded makes them useless."""
    found = find(index_dir, db, chunks=chunks)
    uploads.discard(found.uploads)
    if found.chunk_files:
        shutil.rmtree(index_dir / EMBEDDING_DIR, ignore_errors=True)
    if found:
        log.info("removed what earlier writes left: %s", found.describe())
    return found
