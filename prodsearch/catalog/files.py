"""What a catalog's files are: which extensions are photos, and their content hashes; and how
prodsearch writes a file that readers may open at any moment, and how it tells a folder it wrote
from one it must not touch."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
from pathlib import Path
from typing import Callable, Iterable

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


def file_hash(path: str | os.PathLike, algorithm: str = "md5") -> str:
    """Hex digest of a file, read in 1 MiB chunks (catalog photos and weight files alike). MD5
    identifies catalog photos (as Cdiscount's duplicates analysis does): not used for security."""
    h = hashlib.new(algorithm, usedforsecurity=algorithm != "md5")
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_md5(path: str | os.PathLike) -> str:
    return file_hash(path, "md5")


def write_atomically(path: str | os.PathLike, data: bytes) -> None:
    """Write ``path`` whole or not at all: into ``.NAME.tmp-PID-THREAD`` beside it, renamed over it
    (threads of one server may write the same file at once). On an OSError the partial file is
    removed and the error raised."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        partial.write_bytes(data)
        os.replace(partial, path)
    except OSError:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        raise


def foreign_names(names: Iterable[str], own: re.Pattern[str]) -> list[str]:
    """The entries of a folder that ``own`` (every name prodsearch writes there) does not claim: a
    folder with any is someone else's, and is neither replaced nor cleaned."""
    return [name for name in names if not own.match(name)]


def listed(names: list[str], shown: int = 5) -> str:
    """A few names of a folder's entries for a message, and how many more there are."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def folder_names(folder: Path, error: Callable[[str], Exception]) -> list[str]:
    """The sorted names in ``folder``; one that cannot be read raises ``error(why)``, whose caller
    says which option to change (the index folder and the report folder both check names this way)."""
    try:
        return sorted(p.name for p in folder.iterdir())
    except OSError as exc:
        raise error(f"cannot read the folder {folder} ({exc.strerror or exc})") from None
