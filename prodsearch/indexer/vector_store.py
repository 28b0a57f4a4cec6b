"""Where an index keeps its searchable vectors: FAISS snapshot files in the index folder (the
default), or a Milvus collection (``index --vector-store milvus``).

Either way ``catalog.db`` stays the source of truth (products, images, every vector, the change
log); the store is derived from it and brought level with it by replaying the change log (see
:mod:`prodsearch.indexer.milvus`). This module is light: it names the store; pymilvus is imported only
where a Milvus collection is opened.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from prodsearch.choices import MILVUS_COLLECTION as DEFAULT_COLLECTION
from prodsearch.choices import MILVUS_LITE_FILE as LITE_FILE
from prodsearch.errors import IndexDirError
_SERVER_URI = re.compile(r"^(https?|tcp|grpc)://", re.IGNORECASE)
_COLLECTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")


@dataclass(frozen=True)
class MilvusTarget:
    """A Milvus collection: ``uri`` a server (``http://host:19530``) or a Milvus Lite folder, kept
    relative to the index folder when it lies inside it (so the index folder can move)."""

    uri: str = LITE_FILE
    collection: str = DEFAULT_COLLECTION

    @property
    def is_lite(self) -> bool:
        return not _SERVER_URI.match(self.uri)

    def location(self, index_dir: Path) -> str:
        """The URI to connect to: a Lite folder resolved against ``index_dir``."""
        if not self.is_lite:
            return self.uri
        path = Path(self.uri)
        return str(path if path.is_absolute() else index_dir / path)

    def to_dict(self) -> dict:
        return {"kind": "milvus", "uri": self.uri, "collection": self.collection}

    @classmethod
    def from_dict(cls, d: dict) -> "MilvusTarget":
        return cls(d.get("uri", LITE_FILE), d.get("collection", DEFAULT_COLLECTION))

    def __str__(self) -> str:
        where = f"Milvus Lite {self.uri}" if self.is_lite else f"Milvus at {self.uri}"
        return f"{where}, collection {self.collection}"


def milvus_target(uri: str | None, collection: str | None) -> MilvusTarget:
    """The target ``index --milvus-uri/--milvus-collection`` name, checked before any slow work."""
    target = MilvusTarget(uri or LITE_FILE, collection or DEFAULT_COLLECTION)
    if not _COLLECTION_NAME.match(target.collection):
        raise IndexDirError(f"{target.collection!r} is not a Milvus collection name: use letters, digits and "
                            "underscores, starting with a letter or an underscore (at most 255)")
    return target
