"""Photos uploaded through the API live inside the index folder, content-addressed:
``uploads/<md5[:2]>/<md5>.<ext>``. The name comes from the photo's bytes and format, never from
the client, so no request can write outside that folder, and the same photo uploaded twice is one
file. The catalog records them relative to the index folder (:func:`relative`): the folder is the
contract, and it may be moved or mounted elsewhere. A file goes only once no image row has its
content (its MD5, the file's name), never by comparing path strings."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

from prodsearch.catalog.files import write_atomically

log = logging.getLogger(__name__)

UPLOADS = "uploads"
# An upload's path as any catalog ever recorded it (absolute, relative to the index folder or to
# the working directory of the server that stored it): group 1 is what the index folder makes of it.
_UPLOAD_PATH = re.compile(r"(?:^|[\\/])(uploads[\\/]([0-9a-f]{2})[\\/]\2[0-9a-f]{30}\.[a-z]+)$")
_UPLOAD_NAME = re.compile(r"^([0-9a-f]{32})\.[a-z]+$")


def store(index_dir: Path, data: bytes, extension: str) -> Path:
    """Write ``data`` (unless that photo is there already) and return its absolute path. Call it
    under the writer lock: another writer's clean-up removes files no image row has yet."""
    digest = hashlib.md5(data, usedforsecurity=False).hexdigest()
    path = Path(os.path.abspath(index_dir)) / UPLOADS / digest[:2] / f"{digest}{extension}"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, data)
    return path


def relative(index_dir: Path, path: str) -> str | None:
    """``uploads/<md5[:2]>/<name>`` if ``path`` is an upload of the index at ``index_dir`` (by
    where it is, not how it is spelled), else None: what the catalog records of it."""
    match = _UPLOAD_PATH.search(path)
    if match is None:
        return None
    folder = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    if os.path.realpath(folder) != os.path.realpath(index_dir / UPLOADS):
        return None
    return match.group(1).replace("\\", "/")


def legacy_relative(index_dir: Path, path: str, md5: str) -> str | None:
    """What an older catalog's upload path (absolute, or relative to a server's working directory)
    is relative to ``index_dir``: ``uploads/...`` when the name is ``md5``'s and that file is in
    this index's uploads folder, else None."""
    match = _UPLOAD_PATH.search(path)
    if match is None or not os.path.basename(path).startswith(md5):
        return None
    rel = match.group(1).replace("\\", "/")
    return rel if (index_dir / rel).is_file() else None


def stored_files(index_dir: Path) -> dict[str, list[Path]]:
    """The files in ``uploads/`` by the MD5 their name gives (``""``: partial writes a killed
    process left). Anything else there is left alone."""
    found: dict[str, list[Path]] = {}
    root = index_dir / UPLOADS
    if not root.is_dir():
        return found
    for folder in sorted(root.iterdir()):
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            match = _UPLOAD_NAME.match(path.name)
            if match and match.group(1)[:2] == folder.name and path.is_file():
                found.setdefault(match.group(1), []).append(path)
            elif ".tmp-" in path.name and path.is_file():
                found.setdefault("", []).append(path)
    return found


def discard(paths: list[Path]) -> int:
    """Delete ``paths`` (uploads no image uses); returns how many went."""
    gone = 0
    for path in paths:
        try:
            path.unlink()
            gone += 1
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not delete the uploaded photo %s: %s", path, exc)
    for folder in {path.parent for path in paths}:
        try:
            folder.rmdir()  # only if empty
        except OSError:
            pass
    return gone
