"""Photos uploaded through the API live inside the index folder, content-addressed:
``uploads/<md5[:2]>/<md5>.<ext>``. The name comes from the photo's bytes and format, never from
the client, so no request can write outside that folder, and the same photo uploaded twice is one
file."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Iterable

from prodsearch.catalog.files import write_atomically

log = logging.getLogger(__name__)

UPLOADS = "uploads"


def store(index_dir: Path, data: bytes, extension: str) -> Path:
    """Write ``data`` (unless that photo is there already) and return its path."""
    digest = hashlib.md5(data, usedforsecurity=False).hexdigest()
    path = index_dir / UPLOADS / digest[:2] / f"{digest}{extension}"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, data)
    return path


def discard(index_dir: Path, paths: Iterable[str]) -> int:
    """Delete those of ``paths`` that are uploads (images removed from the index whose files no
    image uses any more); catalog files elsewhere are never touched. Returns how many went."""
    gone = 0
    for path in map(Path, paths):
        if not is_upload(index_dir, path):
            continue
        try:
            path.unlink()
            gone += 1
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not delete the uploaded photo %s: %s", path, exc)
    return gone


def is_upload(index_dir: Path, path: str | os.PathLike) -> bool:
    return Path(path).resolve().parent.parent == (index_dir / UPLOADS).resolve()
