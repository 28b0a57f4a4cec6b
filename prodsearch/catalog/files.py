"""What a catalog's files are: which extensions are photos, and their content hashes; and how
prodsearch writes a file that readers may open at any moment."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from pathlib import Path

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
