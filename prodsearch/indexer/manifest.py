"""The index folder: the contract between ``index`` and ``query``/``eval``.

An index folder holds ``catalog.db`` (SQLite), ``vectors.faiss`` and ``manifest.json`` naming the
model and its preprocessing. A folder is written under a temporary name beside its destination and
renamed into place, so readers see the old index or the new one, never half of one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prodsearch import __version__
from prodsearch.errors import IndexDirError, ModelMismatchError
from prodsearch.retrieval.embedder import EmbedderConfig

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CATALOG_DB = "catalog.db"
VECTORS = "vectors.faiss"
FORMAT = "prodsearch-index"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Manifest:
    model: EmbedderConfig
    index_type: str
    vector_count: int
    skus: int
    catalog_source: str
    prodsearch_version: str = __version__
    created: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "prodsearch_version": self.prodsearch_version,
            "created": self.created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": self.model.to_dict(),
            "embed_dim": self.model.embed_dim,
            "vector_index": {"type": self.index_type, "metric": "inner_product", "count": self.vector_count},
            "catalog": {"source": self.catalog_source, "skus": self.skus},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Manifest":
        return cls(
            model=EmbedderConfig.from_dict(d["model"]),
            index_type=d["vector_index"]["type"],
            vector_count=int(d["vector_index"]["count"]),
            skus=int(d["catalog"]["skus"]),
            catalog_source=d["catalog"]["source"],
            prodsearch_version=d["prodsearch_version"],
            created=d.get("created", ""),
        )


def write_manifest(index_dir: Path, manifest: Manifest) -> None:
    (index_dir / MANIFEST).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n", encoding="utf-8")


def read_manifest(index_dir: str | os.PathLike) -> Manifest:
    """Read and validate an index folder's manifest; raise :class:`IndexDirError` saying what to do."""
    index_dir = Path(index_dir)
    hint = f"build one with: prodsearch index CATALOG --index {index_dir}"
    if not index_dir.is_dir():
        raise IndexDirError(f"index folder {index_dir} does not exist; {hint}")
    path = index_dir / MANIFEST
    if not path.is_file():
        raise IndexDirError(f"{index_dir} is not a prodsearch index (no {MANIFEST}); {hint}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            raise ValueError("not a prodsearch manifest")
        if int(data.get("format_version", 0)) > FORMAT_VERSION:
            raise IndexDirError(f"{index_dir} was written by a newer prodsearch ({data.get('prodsearch_version')}); upgrade prodsearch")
        manifest = Manifest.from_dict(data)
    except (ValueError, KeyError, TypeError) as exc:
        raise IndexDirError(f"{path} is damaged ({exc}); rebuild the index: prodsearch index CATALOG --index {index_dir}") from None
    for name in (CATALOG_DB, VECTORS):
        if not (index_dir / name).is_file():
            raise IndexDirError(f"{index_dir} is incomplete ({name} is missing); rebuild the index: prodsearch index CATALOG --index {index_dir}")
    return manifest


def check_model(manifest: Manifest, config: EmbedderConfig, index_dir: str | os.PathLike) -> None:
    """Refuse to compare vectors from different models: their similarities mean nothing."""
    built, now = manifest.model.identity(), config.identity()
    diffs = [key for key in built if built[key] != now.get(key)]
    if diffs:
        detail = "; ".join(f"{key}: index has {built[key]!r}, query would use {now.get(key)!r}" for key in diffs)
        raise ModelMismatchError(
            f"index {index_dir} was built with model {manifest.model.label} but this query would use "
            f"{config.label} ({detail}); query with --model {manifest.model.label}, or rebuild the index "
            f"with the model you want: prodsearch index CATALOG --index {index_dir} --model {config.label}"
        )


def is_index_dir(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def check_target(index_dir: Path) -> None:
    """Refuse to overwrite a folder that holds something other than a prodsearch index."""
    if index_dir.exists() and (not index_dir.is_dir() or (any(index_dir.iterdir()) and not is_index_dir(index_dir))):
        raise IndexDirError(
            f"{index_dir} exists and is not a prodsearch index; choose a new or empty folder for --index"
        )


def staging_dir(index_dir: Path) -> Path:
    """A fresh folder beside ``index_dir`` (same filesystem, so the final rename is atomic)."""
    index_dir.parent.mkdir(parents=True, exist_ok=True)
    path = index_dir.parent / f".{index_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return path


def publish(staged: Path, index_dir: Path) -> None:
    """Move a complete staged index into place, replacing an older index at that path."""
    check_target(index_dir)
    old = None
    if index_dir.exists():
        old = index_dir.parent / f".{index_dir.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(index_dir, old)
    os.replace(staged, index_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
        log.info("replaced the previous index at %s", index_dir)
