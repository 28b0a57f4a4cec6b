"""A new index folder appears whole or not at all.

It is assembled in a staging folder beside its destination (``.NAME.tmp-*``, same filesystem)
under the writer lock, then renamed into place in one step. A build killed half-way leaves its
staging folder behind, unlocked: the next build beside it removes it.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

from prodsearch.errors import IndexDirError
from prodsearch.indexer.catalog_db import can_write
from prodsearch.indexer.lock import lock_is_held
from prodsearch.indexer.manifest import TUNE_DIR

log = logging.getLogger(__name__)

# A staging folder without a lock file may be one another build created a moment ago and has not
# locked yet; past this age it is a crashed build's.
UNLOCKED_STALE_SECONDS = 60.0


def staging_dir(index_dir: Path) -> Path:
    """A fresh folder beside ``index_dir``; crashed builds' leftovers there are removed first."""
    try:
        index_dir.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(index_dir)
        path = index_dir.parent / f".{index_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
        path.mkdir()
    except OSError as exc:
        raise _cannot_create(index_dir, exc.filename or index_dir.parent, exc.strerror or str(exc)) from None
    return path


def _cannot_create(index_dir: Path, where: object, why: str) -> IndexDirError:
    return IndexDirError(f"cannot create the index folder {index_dir}: {where} cannot be written ({why}); "
                         "choose a folder you can write for --index")


def check_can_create(index_dir: Path) -> None:
    """Refuse early (before embedding) to build where the new folder cannot be created."""
    ancestor = index_dir.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not can_write(ancestor, os.W_OK | os.X_OK):
        raise _cannot_create(index_dir, ancestor, "Permission denied")


def remove_stale_staging(index_dir: Path) -> list[Path]:
    """Delete staging folders of builds of ``index_dir`` that died (their lock is free), and the
    old copy a replacing build had set aside if the new index is in place; return what went."""
    removed = []
    for path in index_dir.parent.glob(f".{glob_escape(index_dir.name)}.*-*"):
        if path.is_dir() and not path.is_symlink() and _is_stale(path, index_dir):
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed %s, left by a build that did not finish", path)
            removed.append(path)
    return removed


def _is_stale(path: Path, index_dir: Path) -> bool:
    kind = path.name[len(index_dir.name) + 2:].split("-", 1)[0]
    if kind == "old":  # set aside by publish_replacing; garbage once the new index is there
        return index_dir.is_dir()
    if kind != "tmp":
        return False
    held = lock_is_held(path)
    if held is None:
        return time.time() - path.stat().st_mtime > UNLOCKED_STALE_SECONDS
    return not held


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def publish_replacing(staged: Path, index_dir: Path) -> None:
    """Put a complete staged index in place of an unreadable one (older format, damaged): the old
    folder is renamed aside first, then deleted, so a crash leaves one of the two whole. Its
    ``tune/`` folder moves into the new index."""
    aside = index_dir.parent / f".{index_dir.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(index_dir, aside)
    if (aside / TUNE_DIR).is_dir() and not (aside / TUNE_DIR).is_symlink():  # what tune measured stays
        os.rename(aside / TUNE_DIR, staged / TUNE_DIR)
    publish_new(staged, index_dir)
    shutil.rmtree(aside, ignore_errors=True)


def publish_new(staged: Path, index_dir: Path) -> None:
    """Move a complete staged index to ``index_dir``, which must not hold anything yet: one
    atomic rename, so the folder appears whole or not at all. What ``prodsearch tune`` measured
    there before the index existed (its only content) moves into the new index first."""
    _carry_tuning(index_dir, staged)
    try:
        os.rename(staged, index_dir)  # replaces an empty folder; fails on a non-empty one
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise IndexDirError(f"{index_dir} was created by another process meanwhile; choose another --index") from None
        raise IndexDirError(f"cannot move the new index into place at {index_dir} ({exc.strerror or exc}); "
                            "choose a folder you can write for --index") from None


def _carry_tuning(index_dir: Path, staged: Path) -> None:
    """Move ``index_dir/tune`` into ``staged`` when it is all ``index_dir`` holds, and remove the
    then empty folder, so that the rename can put the new index in its place."""
    tune = index_dir / TUNE_DIR
    try:
        if not tune.is_dir() or tune.is_symlink() or os.listdir(index_dir) != [TUNE_DIR]:
            return
        os.rename(tune, staged / TUNE_DIR)
        os.rmdir(index_dir)
    except OSError as exc:
        raise IndexDirError(f"cannot move {tune} into the new index ({exc.strerror or exc}); choose a folder you can "
                            "write for --index") from None
