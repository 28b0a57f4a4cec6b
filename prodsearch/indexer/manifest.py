"""The index folder: the contract between ``index`` and ``query``/``eval``.

An index folder holds ``manifest.json`` naming the model and its preprocessing, ``catalog.db``
(SQLite: products, images, vectors), ``vectors-<generation>.faiss`` (see :mod:`.store`) or, where the
vectors are searched in Milvus, a Milvus Lite folder ``milvus.db`` (none for a server), and the model
exported to ONNX (``model-fp32-<digest>.onnx``, see :mod:`.models`). A new folder is assembled
beside its destination and renamed into place, so it appears whole or not at all; later writes go
through :class:`~prodsearch.indexer.writer.IndexWriter`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prodsearch import __version__
from prodsearch.catalog.files import folder_names, foreign_names, listed, write_atomically
from prodsearch.errors import IndexDirError, ModelMismatchError
from prodsearch.indexer.precision_check import PrecisionCheck
from prodsearch.indexer.store import CATALOG_DB
from prodsearch.indexer.vector_store import MilvusTarget
from prodsearch.retrieval.config import EmbedderConfig
from prodsearch.retrieval.onnx_files import MODEL_FILE_PATTERN

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
TUNE_DIR = "tune"  # 'prodsearch tune' keeps its measurements and training runs here, inside the index folder
FORMAT = "prodsearch-index"
FORMAT_VERSION = 2  # 2: catalog.db holds the vectors; FAISS snapshots are derived from it
STORE_FORMAT_VERSION = 3  # 3: the vectors are searched in a Milvus collection (older prodsearch cannot)
READABLE_VERSIONS = (FORMAT_VERSION, STORE_FORMAT_VERSION)


class NewerFormatError(IndexDirError):
    """An index written by a newer prodsearch: readable by that version, so never replaced."""


@dataclass(frozen=True)
class Manifest:
    """What an index is, fixed when it is created: the model and its preprocessing, the views each
    photo is embedded as, the vector index type. What it holds (counts, generation) changes with
    every write and lives in the catalog database; ``prodsearch info`` shows both."""

    model: EmbedderConfig
    index_type: str  # the FAISS class, for people
    catalog_source: str
    prodsearch_version: str = __version__
    created: str = ""
    index_factory: str = "auto"  # the FAISS factory string it was built as, for rebuilding it alike
    index_requested: str = ""  # what --index-type asked for ("auto" or a factory): a rebuild resizes by it
    views: int = 1  # every photo, catalog and query, embedded as the mean of this many fixed views
    milvus: MilvusTarget | None = None  # where the vectors are searched; None: FAISS snapshots in the folder
    # whether int8 kept this shop's answers, measured when it was built; None: not measured (fp32 asked
    # for, a CPU where auto takes fp32, or built before the check): auto then runs int8 where it is stored
    precision_check: PrecisionCheck | None = None
    tuning: dict[str, Any] | None = None  # what 'prodsearch tune' chose these settings on (absent: not tuned)

    @property
    def store(self) -> str:
        return "faiss" if self.milvus is None else "milvus"

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION if self.milvus is None else STORE_FORMAT_VERSION,
            "prodsearch_version": self.prodsearch_version,
            "created": self.created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": self.model.to_dict(),
            "embed_dim": self.model.embed_dim,
            "embedding": {"views": self.views},
            "vector_index": {"type": self.index_type, "factory": self.index_factory,
                             "requested": self.index_requested or self.index_factory, "metric": "inner_product"},
            "catalog": {"source": self.catalog_source},
            "vector_store": {"kind": "faiss"} if self.milvus is None else self.milvus.to_dict(),
            **({} if self.precision_check is None else {"precision_check": self.precision_check.to_dict()}),
        } | ({} if self.tuning is None else {"tuning": self.tuning})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Manifest":
        return cls(
            model=EmbedderConfig.from_dict(d["model"]),
            index_type=d["vector_index"]["type"],
            catalog_source=d["catalog"]["source"],
            prodsearch_version=d["prodsearch_version"],
            created=d.get("created", ""),
            index_factory=d["vector_index"].get("factory", "auto"),
            index_requested=d["vector_index"].get("requested") or d["vector_index"].get("factory", "auto"),
            views=d.get("embedding", {}).get("views", 1),  # indexes from before views: the photo alone
            milvus=MilvusTarget.from_dict(store) if (store := d.get("vector_store", {})).get("kind") == "milvus" else None,
            precision_check=PrecisionCheck.from_dict(d["precision_check"]) if d.get("precision_check") else None,
            tuning=d.get("tuning"),
        )


def write_manifest(index_dir: Path, manifest: Manifest) -> None:
    """Write the manifest whole or not at all (a rebuild in place rewrites it beside readers)."""
    write_atomically(index_dir / MANIFEST, (json.dumps(manifest.to_dict(), indent=2) + "\n").encode("utf-8"))


def read_manifest(index_dir: str | os.PathLike) -> Manifest:
    """Read and validate an index folder's manifest; raise :class:`IndexDirError` saying what to do."""
    index_dir = Path(index_dir)
    rebuild = f"rebuild the index: prodsearch index CATALOG --index {index_dir}"
    if not index_dir.is_dir():
        raise IndexDirError(f"index folder {index_dir} does not exist; build one with: prodsearch index CATALOG --index {index_dir}")
    path = index_dir / MANIFEST
    if not path.is_file():
        raise IndexDirError(f"{index_dir} is not a prodsearch index (no {MANIFEST}); build one with: prodsearch index CATALOG --index {index_dir}")
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise IndexDirError(f"cannot read {path} ({exc.strerror or exc}); check the folder's permissions") from None
    _check_version(_json_object(text), index_dir, rebuild)
    from prodsearch.indexer.manifest_schema import manifest_problem  # pydantic: only where a manifest is read

    problem = manifest_problem(text)
    if problem:
        raise IndexDirError(f"{path} is damaged ({problem}); {rebuild}")
    manifest = Manifest.from_dict(json.loads(text))
    if not (index_dir / CATALOG_DB).is_file():
        raise IndexDirError(f"{index_dir} is incomplete ({CATALOG_DB} is missing); {rebuild}")
    return manifest


def _json_object(text: bytes) -> dict:
    """The manifest's JSON object, or ``{}`` when it is not one (the schema check says why)."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _check_version(data: dict, index_dir: Path, rebuild: str) -> None:
    """Another format version gets its own advice: upgrade prodsearch, or rebuild."""
    version = data.get("format_version")
    if data.get("format") != FORMAT or not isinstance(version, int) or version in READABLE_VERSIONS:
        return
    if version > max(READABLE_VERSIONS):
        raise NewerFormatError(f"{index_dir} was written by a newer prodsearch ({data.get('prodsearch_version')}); upgrade prodsearch")
    raise IndexDirError(f"{index_dir} was written by an older prodsearch ({data.get('prodsearch_version')}); {rebuild}")


def check_model(manifest: Manifest, config: EmbedderConfig, index_dir: str | os.PathLike) -> None:
    """Refuse to compare vectors from different models: their similarities mean nothing. The
    message names every field that differs (``weights``, ``data_config.input_size``...)."""
    diffs = model_differences(manifest.model.identity(), config.identity())
    if not diffs:
        return
    detail = "; ".join(f"{key}: index has {built!r}, query would use {now!r}" for key, built, now in diffs)
    if manifest.model.label == config.label:  # same name, other vectors: advice to use that name cannot help
        raise ModelMismatchError(
            f"the manifest of index {index_dir} names model {config.label}, but that model does not produce what "
            f"the manifest records ({detail}); the manifest was edited or the model changed since the index was "
            f"built: rebuild the index: prodsearch index CATALOG --index {index_dir} --model {config.label}")
    raise ModelMismatchError(
        f"index {index_dir} was built with model {manifest.model.label} but this query would use "
        f"{config.label} ({detail}); query with --model {manifest.model.label}, or rebuild the index "
        f"with the model you want: prodsearch index CATALOG --index {index_dir} --model {config.label}"
    )


def model_differences(built: dict, now: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted field, index's value, query's value) of every field that differs, nested dicts opened."""
    out = []
    for key in sorted(set(built) | set(now), key=str):
        a, b = built.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += model_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append((f"{prefix}{key}", a, b))
    return out


def is_index_dir(path: Path) -> bool:
    return (path / MANIFEST).is_file()


# What a prodsearch index folder may hold: its manifest, the catalog database with SQLite's side
# files, FAISS snapshots or the Milvus Lite folder, the writer lock and who holds it, temporary files
# a crashed writer left, the server's folders of uploaded photos and thumbnails, and what tune measured.
INDEX_FILE = re.compile(r"^(manifest\.json|catalog\.db(-wal|-shm|-journal)?|vectors-\d{8}\.faiss|milvus\.db|"
                        rf"{MODEL_FILE_PATTERN}|\.lock|\.writer|.*\.tmp-.*|uploads|thumbnails|{TUNE_DIR})$")


def check_target(index_dir: Path) -> None:
    """Refuse to write into a folder that holds something other than a prodsearch index."""
    if not index_dir.exists() and not index_dir.is_symlink():
        return
    if not index_dir.is_dir():
        raise IndexDirError(f"{index_dir} exists and is not a folder; choose a new or empty folder for --index")
    entries = [name for name in _entries(index_dir) if name != TUNE_DIR]  # a tune run before its index is built
    if entries and not is_index_dir(index_dir):
        raise IndexDirError(f"{index_dir} exists and is not a prodsearch index (it holds {listed(entries)}); "
                            "choose a new or empty folder for --index")


def check_replaceable(index_dir: Path, why: str) -> None:
    """Refuse to replace an unreadable folder unless it is provably a prodsearch index: every file in
    it is an index file, and its manifest says it is one or it holds a catalog database. Replacing
    deletes the folder, so a folder that merely holds a ``manifest.json`` is never replaced."""
    entries = _entries(index_dir)
    foreign = foreign_names(entries, INDEX_FILE)
    if foreign or not (_has_own_format(index_dir / MANIFEST) or CATALOG_DB in entries):
        held = f"it holds {listed(foreign)}, which no prodsearch index does" if foreign else f"it holds {listed(entries)}"
        raise IndexDirError(f"{index_dir} is not a prodsearch index that can be rebuilt ({why}; {held}); "
                            "nothing was changed: choose a new or empty folder for --index")


def _has_own_format(path: Path) -> bool:
    try:
        return _json_object(path.read_bytes()).get("format") == FORMAT
    except OSError:
        return False


def _entries(folder: Path) -> list[str]:
    return folder_names(folder, lambda why: IndexDirError(f"{why}; choose a folder you can read and write for --index"))
