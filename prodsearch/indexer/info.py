"""``info``: what an index holds, what it costs on disk, and whether it is consistent."""

from __future__ import annotations

import os
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from prodsearch.errors import IndexDirError, VectorStoreError, VectorStoreHeldError
from prodsearch.indexer import leftovers
from prodsearch.indexer.catalog_db import CatalogDB, stored_dtype
from prodsearch.indexer.lock import HOLDER_FILE, LOCK_FILE
from prodsearch.indexer.manifest import Manifest, read_manifest
from prodsearch.indexer.models import refused_int8
from prodsearch.indexer.rejection import REJECTION_SETTING
from prodsearch.indexer.store import CATALOG_DB, load_vectors, snapshot_path
from prodsearch.indexer.vector_store import LITE_FILE
from prodsearch.indexer.vectors import vector_ids
from prodsearch.retrieval.onnx_files import stored_models
from prodsearch.retrieval.runtime import auto_precision, resolve_runtime


@dataclass
class IndexInfo:
    index_dir: str
    model: str
    weights: str
    embed_dim: int
    input_size: int
    index_type: str
    skus: int
    images: int
    vectors: int | None  # None: held by another process (see held_by), not read
    generation: int
    snapshot: int
    pending_changes: int  # logged since the FAISS snapshot; applied when the index is opened
    files: dict[str, int] = field(default_factory=dict)  # name -> bytes
    problems: list[str] = field(default_factory=list)
    index_factory: str = "auto"
    memory_bytes_per_image: float = 0.0  # the FAISS index a reader holds in memory, per vector
    stored_bytes_per_image: float = 0.0  # the vector blobs in catalog.db, per vector
    stored_dtype: str = ""  # of those blobs: float16; float32 in older indexes; "float16+float32" in both
    onnx_models: dict[str, str] = field(default_factory=dict)  # model-*.onnx file -> "ok" or why it is not used
    runtime: str = ""  # what --runtime/--precision auto run queries on, on this machine
    rejection: dict | None = None  # the calibrated "not in catalog" rule (RejectRule.to_dict()); None: none
    views: int = 1  # views each photo, catalog and query, is embedded as
    vector_store: str = "faiss"  # or the Milvus collection the vectors are searched in
    held_by: str = ""  # the process that holds a Milvus Lite store: its vectors were not read ("vectors": None)
    leftovers: dict[str, int] = field(default_factory=dict)  # what the next write removes (Leftovers.to_dict)
    precision_check: dict | None = None  # whether int8 kept the shop's answers (PrecisionCheck.to_dict()); None: not measured
    tuning: dict | None = None  # what 'prodsearch tune' chose the settings on (the manifest's); None: not tuned

    @property
    def size_bytes(self) -> int:
        return sum(self.files.values())

    @property
    def consistent(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {**asdict(self), "size_bytes": self.size_bytes, "consistent": self.consistent}


def auto_runtime(onnx_models: dict[str, str], manifest: Manifest) -> str:
    """What ``--runtime auto --precision auto`` runs this index on, on this machine: int8 only where
    the rule picks it, the index did not refuse it (:func:`refused_int8`) and it holds a sound int8 model."""
    runtime, device = resolve_runtime()
    precision = auto_precision(runtime, device)
    if runtime == "onnx" and precision == "int8" and (refused_int8(manifest) or not any(
            name.startswith("model-int8-") and state == "ok" for name, state in onnx_models.items())):
        precision = "fp32"
    return f"{runtime} {precision} on {device}"


def index_info(index_dir: str | os.PathLike) -> IndexInfo:
    """Describe an index and check that every vector has a catalog row and vice versa. It reports
    what it finds rather than failing, so it can say what is wrong with a damaged index."""
    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir)
    model = manifest.model
    db = CatalogDB(index_dir / CATALOG_DB)
    with closing(db), db.guarded():
        db.begin_snapshot()
        state, counts, problems = db.state(), db.counts(), []
        image_ids = db.image_ids()
        try:
            store_ids = (_milvus_ids if manifest.milvus is not None else _snapshot_ids)(index_dir, db, manifest, problems)
            held_by = ""
        except VectorStoreHeldError as exc:  # not damage: the vectors are in use, and left uncompared
            store_ids, held_by = None, exc.holder
        ntotal = None if store_ids is None else len(store_ids)
        if store_ids is not None and not np.array_equal(store_ids, image_ids):
            problems.append(f"the vector index has {len(np.setdiff1d(store_ids, image_ids))} vectors without a "
                            f"catalog image and {len(np.setdiff1d(image_ids, store_ids))} images without a vector")
        if not np.array_equal(db.vector_ids(), image_ids):
            problems.append("the stored vectors do not match the catalog images")
        sizes = db.stored_sizes()
        dtypes = {nbytes: stored_dtype(nbytes, model.embed_dim) for nbytes in sizes}
        wrong = sum(count for nbytes, count in sizes.items() if dtypes[nbytes] is None)
        if wrong:
            problems.append(f"{wrong} stored vectors are neither float16 nor float32 {model.embed_dim}-d vectors")
        orphans = db.orphan_product_count()
        if orphans:
            problems.append(f"{orphans} products without images")
        check = db.integrity_problem()
        if check:
            problems.append(f"SQLite integrity check: {check}")
        pending = db.pending_changes()
        rejection = db.setting(REJECTION_SETTING)
        left = leftovers.find(index_dir, db)
    files = {p.name: p.stat().st_size for p in sorted(index_dir.iterdir()) if p.is_file() and p.name not in (LOCK_FILE, HOLDER_FILE)}
    lite = index_dir / LITE_FILE  # a Milvus Lite folder inside the index: its files together
    if lite.is_dir():
        files[LITE_FILE] = sum(f.stat().st_size for f in lite.rglob("*") if f.is_file())
    snapshot = snapshot_path(index_dir, state.snapshot)
    per_image = snapshot.stat().st_size / ntotal if ntotal and snapshot.is_file() else 0.0  # the file is the index
    onnx_models = stored_models(index_dir, model)
    return IndexInfo(str(index_dir), model.label, model.weights, model.embed_dim, int(model.data_config["input_size"][-1]),
                     manifest.index_type, counts["products"], counts["images"], ntotal, state.generation,
                     state.snapshot, pending, files, problems, manifest.index_factory, per_image,
                     sum((n or 0) * c for n, c in sizes.items()) / max(1, counts["vectors"]),
                     "+".join(sorted({d.name for d in dtypes.values() if d is not None})),
                     onnx_models, auto_runtime(onnx_models, manifest), rejection, manifest.views,
                     "faiss" if manifest.milvus is None else str(manifest.milvus), held_by, left.to_dict(),
                     None if manifest.precision_check is None else manifest.precision_check.to_dict(),
                     tuning=manifest.tuning)


def _snapshot_ids(index_dir: Path, db: CatalogDB, manifest: Manifest, problems: list[str]) -> np.ndarray:
    """The ids the FAISS snapshot with the logged changes applied holds (sorted)."""
    try:
        return np.sort(vector_ids(load_vectors(index_dir, db, manifest.model.embed_dim, manifest.index_factory)))
    except (RuntimeError, OSError, IndexDirError) as exc:
        problems.append(f"the vector snapshot cannot be read ({exc})")
        return np.zeros(0, dtype=np.int64)


def _milvus_ids(index_dir: Path, db: CatalogDB, manifest: Manifest, problems: list[str]) -> np.ndarray:
    """The ids readers search in the Milvus collection, with the logged changes applied (sorted)."""
    from prodsearch.indexer.milvus import MilvusStore, searchable_ids  # pymilvus: only for such an index

    try:
        with MilvusStore.open(manifest.milvus, index_dir, manifest.model.embed_dim) as store:
            return searchable_ids(db, store)
    except VectorStoreHeldError:
        raise
    except VectorStoreError as exc:
        problems.append(str(exc))
        return np.zeros(0, dtype=np.int64)


def repair_index(index_dir: str | os.PathLike, *, wait: float = 0.0) -> str:
    """``info --repair``: under the writer lock, bring the vector store level with ``catalog.db``."""
    from prodsearch.indexer.writer import IndexWriter

    with IndexWriter(index_dir, "repair", wait=wait) as writer:
        return writer.repair()
