"""Vectors in a Milvus collection, through pymilvus: Milvus Lite (a folder, in process), a
standalone server or a cluster, one client for all.

A row per image: ``image_id`` (INT64 primary key), ``vector`` (FLOAT_VECTOR, inner product on
L2-normalised vectors), ``sku`` and ``category`` (VARCHAR), so a category or SKU restriction is a
filter expression evaluated inside the search. ``catalog.db`` stays the truth: a writer commits
SQLite first, then replays the change log into Milvus (:func:`catch_up`: upsert and delete by
primary key, so replaying twice changes nothing) and only then marks the log as applied. A process
killed in between leaves the log to the next writer or ``info --repair`` (:func:`level`, which
compares every id).

Readers never wait for that: as a FAISS reader applies the change log to its snapshot, a Milvus
reader searches the collection with the log applied (:class:`MilvusSearch`). Every image logged
since the collection was brought level is left out of the Milvus search (its row may be missing,
stale or deleted there) and scored instead, exactly, from its vector in ``catalog.db``, and the two
top-k lists are merged. The collection minus those ids is the catalog of the level generation minus
them, which is the catalog of the reader's generation minus them; so the answer is that of the
reader's generation whether the writer died before, during or after writing Milvus, and with no
crash at all while a writer in another process has committed and not yet written Milvus. The log
is short (one ``add`` chunk at most; the whole catalog only after a rebuild in place killed
part-way, when the reader holds it as a FAISS reader would) until the next writer replays it.

Milvus Lite serves one process at a time (it locks its folder); several processes at once (a server
answering while ``add`` runs) need a Milvus server.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from prodsearch.errors import VectorStoreError, VectorStoreHeldError

try:
    from pymilvus import DataType, MilvusClient, MilvusException
    from pymilvus.exceptions import ConnectionConfigException
except ImportError:  # an optional dependency: say how to get it
    raise VectorStoreError("keeping vectors in Milvus needs pymilvus and milvus-lite: pip install 'prodsearch[milvus]'") from None
from prodsearch.indexer.catalog_db import CatalogDB
from prodsearch.indexer.lock import flock_holder, process_command
from prodsearch.failpoints import crash_point
from prodsearch.indexer.milvus_types import parse_spec, search_params
from prodsearch.indexer.search_backend import FaissSearch, Where
from prodsearch.indexer.vectors import create_vector_index
from prodsearch.choices import MILVUS_TOKEN_ENV as TOKEN_ENV
from prodsearch.indexer.vector_store import MilvusTarget

log = logging.getLogger(__name__)
# pymilvus logs every refused request with a traceback before raising it; prodsearch reports it once,
# as a VectorStoreError saying what to do.
logging.getLogger("pymilvus.decorators").setLevel(logging.CRITICAL)
# Milvus Lite hands out no server timestamps; the id iterator says so at every call and carries on.
logging.getLogger("pymilvus.client.iterator.query_iterator").setLevel(logging.ERROR)

MAX_TOPK = 16_384  # Milvus's limit on k and on queries per request
UPSERT_ROWS = 5_000  # rows per request: a request stays well under Milvus's 64 MB at d = 2560
LITE_LOCK = "LOCK"  # the file in a Milvus Lite folder its process holds a flock on
_lite_lock = threading.Lock()
_lite_users: dict[str, int] = {}  # Lite folder -> open stores in this process (they share its server)


class MilvusStore:
    """One collection of one index; open with :meth:`open`, close with :meth:`close`."""

    def __init__(self, client: MilvusClient, target: MilvusTarget, uri: str, dim: int):
        self.client, self.target, self.uri, self.dim = client, target, uri, dim
        self.name = target.collection

    @classmethod
    def open(cls, target: MilvusTarget, index_dir: Path, dim: int) -> "MilvusStore":
        uri = target.location(Path(index_dir))
        try:
            if target.is_lite:
                # Milvus Lite's in-process gRPC server logs, as an error, each call pymilvus makes that it
                # does not implement (AllocTimestamp); pymilvus then carries on without it.
                logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
                with _lite_lock, _LiteFailure() as failure:
                    client = MilvusClient(uri)
                    _lite_users[uri] = _lite_users.get(uri, 0) + 1
            else:
                failure = None
                client = MilvusClient(uri=uri, token=os.environ.get(TOKEN_ENV, ""))
        except (MilvusException, ConnectionConfigException) as exc:
            raise _unreachable(target, Path(index_dir), uri, failure and failure.cause or exc) from None
        return cls(client, target, uri, dim)

    def close(self) -> None:
        """Close the client; the last store of a Lite folder in this process also stops its server and
        unlocks the folder (pymilvus would keep it until the process exits)."""
        self.client.close()
        if self.target.is_lite:
            with _lite_lock:
                _lite_users[self.uri] -= 1
                if not _lite_users[self.uri]:
                    del _lite_users[self.uri]
                    from milvus_lite.server_manager import server_manager_instance

                    server_manager_instance.release_server(os.path.abspath(self.uri))

    def __enter__(self) -> "MilvusStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ the collection

    def exists(self) -> bool:
        return self._call(self.client.has_collection, self.name)

    def create(self, spec: str) -> None:
        """A new empty collection with the index ``spec`` (see :mod:`.milvus_types`)."""
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("image_id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        schema.add_field("sku", DataType.VARCHAR, max_length=1024)
        schema.add_field("category", DataType.VARCHAR, max_length=4096)
        kind, params = parse_spec(spec)
        index = self.client.prepare_index_params()
        index.add_index(field_name="vector", index_type=kind, metric_type="IP", params=params)
        self._call(self.client.create_collection, self.name, schema=schema, index_params=index)
        log.info("created the Milvus collection %s (%s) at %s", self.name, spec, self.uri)

    def load(self) -> None:
        """Load the collection for searching (a server or Lite process that opens it finds it released)."""
        self._call(self.client.load_collection, self.name)

    def drop(self) -> None:
        if self.exists():
            self._call(self.client.drop_collection, self.name)

    def count(self) -> int:
        return int(self._call(self.client.get_collection_stats, self.name)["row_count"])

    def ids(self, batch: int = 10_000, expr: str = "") -> np.ndarray:
        """Every image id the collection holds (those ``expr`` selects), sorted (read in batches)."""
        self.load()
        iterator = self._call(self.client.query_iterator, self.name, batch_size=batch, filter=expr,
                              output_fields=["image_id"])
        found = []
        try:
            while rows := iterator.next():
                found.append(np.fromiter((r["image_id"] for r in rows), dtype=np.int64, count=len(rows)))
        finally:
            iterator.close()
        return np.sort(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)

    # ------------------------------------------------------------------ rows

    def upsert(self, ids: np.ndarray, vectors: np.ndarray, skus: list[str], categories: list[str]) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        for start in range(0, len(ids), UPSERT_ROWS):
            end = start + UPSERT_ROWS
            rows = [{"image_id": int(i), "vector": v, "sku": s, "category": c}
                    for i, v, s, c in zip(ids[start:end], vectors[start:end], skus[start:end], categories[start:end])]
            self._call(self.client.upsert, self.name, rows)

    def delete(self, ids: list[int]) -> None:
        for start in range(0, len(ids), UPSERT_ROWS):
            self._call(self.client.delete, self.name, ids=[int(i) for i in ids[start:start + UPSERT_ROWS]])

    def flush(self) -> None:
        self._call(self.client.flush, self.name)

    def search(self, queries: np.ndarray, k: int, expr: str = "", params: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (similarities, ids) per query, best first, id -1 padding; ``expr`` filters inside."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(k, MAX_TOPK)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        for start in range(0, len(queries), MAX_TOPK):
            hits = self._call(self.client.search, self.name, data=list(queries[start:start + MAX_TOPK]), limit=k,
                              filter=expr, output_fields=[],
                              search_params={"metric_type": "IP", "params": params or {}})
            for row, found in enumerate(hits, start):
                ids[row, :len(found)] = [h["image_id"] if "image_id" in h else h["id"] for h in found]
                scores[row, :len(found)] = [h["distance"] for h in found]
        return scores, ids

    def _call(self, method, *args, **kwargs):
        try:
            return method(*args, **kwargs)
        except MilvusException as exc:
            raise VectorStoreError(f"Milvus ({self.target}) refused {method.__name__}: {exc.message}") from None


class MilvusSearch:
    """:class:`~prodsearch.indexer.search_backend.VectorSearch` over a collection, with the catalog's
    change log since the collection was brought level applied (``unsynced``: see the module's
    docstring). It filters by fields (``where``: a category subtree, SKUs left out) inside Milvus; an
    id list (``among``) is sent as ``image_id in [...]`` only when no ``where`` describes it."""

    def __init__(self, store: MilvusStore, kind: str, search_overrides: dict[str, int] | None = None,
                 unsynced: Unsynced | None = None):
        self.store = store
        self.params = search_params(kind, search_overrides)
        self.unsynced = unsynced if unsynced is not None and len(unsynced.hidden) else None
        self._held = np.zeros(0, dtype=np.int64)  # the hidden ids the collection held when this view was read
        if self.unsynced is not None and self.unsynced.everything:  # the collection may be gone mid-rebuild
            self._ntotal = self.unsynced.exact.ntotal
            return
        store.load()
        self._ntotal = store.count()  # one generation's view: counted once, as a FAISS snapshot is
        if self.unsynced is not None:
            self._held = store.ids(expr=f"image_id in [{_ids(self.unsynced.hidden)}]")
            self._ntotal += self.unsynced.exact.ntotal - len(self._held)

    @property
    def ntotal(self) -> int:
        return self._ntotal

    def search(self, queries: np.ndarray, k: int, among: np.ndarray | None = None,
               where: Where | None = None) -> tuple[np.ndarray, np.ndarray]:
        if where is not None:
            expr = filter_expression(where)
        elif among is not None:
            expr = f"image_id in [{_ids(among)}]"
        else:
            expr = ""
        if self.unsynced is None:
            return self.store.search(queries, k, expr, self.params)
        exact = self.unsynced.exact.search(queries, k, among)  # ``among`` is what ``where`` describes
        if self.unsynced.everything:
            return exact
        scores, ids = (np.concatenate(pair, axis=1) for pair in zip(self._without_hidden(queries, k, expr), exact))
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # -inf padding last
        return np.take_along_axis(scores, best, axis=1), np.take_along_axis(ids, best, axis=1)

    def _without_hidden(self, queries: np.ndarray, k: int, expr: str) -> tuple[np.ndarray, np.ndarray]:
        """The collection's top ``k`` without the hidden ids (-inf, -1 where they were): its top ``k`` +
        as many as it held when the view was read, those dropped, so no id list is sent (after a killed
        ``add`` it holds none of them). Only those held rows can be wrong for this generation (a deleted
        image, a category since changed) and push a right one out; rows a writer has written since are
        this generation's (in the exact search too) or a newer one's, which the next refresh loads. An
        id list where the widened search would pass Milvus's limit."""
        hidden = self.unsynced.hidden
        if k + len(self._held) > MAX_TOPK:
            without = f"image_id not in [{_ids(hidden)}]"
            return self.store.search(queries, k, f"({expr}) and {without}" if expr else without, self.params)
        scores, ids = self.store.search(queries, k + len(self._held), expr, self.params)
        drop = np.isin(ids, hidden)
        return np.where(drop, -np.inf, scores), np.where(drop, -1, ids)

    def add(self, vectors: np.ndarray, ids: np.ndarray, skus: list[str] | None = None,
            categories: list[str] | None = None) -> None:
        """Upsert rows: a Milvus row needs each image's SKU and category besides its vector."""
        if skus is None or categories is None:
            raise TypeError("a Milvus row needs each image's sku and category: add(vectors, ids, skus, categories)")
        self.store.upsert(np.asarray(ids), vectors, skus, categories)

    def remove(self, ids: np.ndarray) -> bool:
        self.store.delete([int(i) for i in ids])
        return True


class Unsynced:
    """The change log a collection has not been brought level with, as a reader applies it: the ids
    logged since (``hidden``: whatever Milvus holds of them may be missing, stale or deleted) and an
    exact FAISS search over the stored vectors of those the catalog still holds. Read it inside the
    reader's SQLite read transaction, so it is the log of the reader's generation."""

    def __init__(self, db: CatalogDB, dim: int):
        upsert, self.hidden = _logged(db)
        self.exact = FaissSearch(create_vector_index(dim, len(upsert), "Flat"))
        if len(upsert):
            self.exact.add(db.vectors(upsert.tolist(), dim), upsert)
        # after a rebuild killed part-way the log holds every image: the collection has nothing to add
        self.everything = len(upsert) == db.counts()["images"]


def searchable_ids(db: CatalogDB, store: MilvusStore) -> np.ndarray:
    """The ids a reader of ``db``'s generation searches (sorted): the collection's with the change
    log applied, as :class:`Unsynced` applies it; what ``info`` compares with the catalog."""
    upsert, hidden = _logged(db)
    held = store.ids() if store.exists() else np.zeros(0, dtype=np.int64)  # gone: a rebuild killed mid-way
    return np.union1d(np.setdiff1d(held, hidden), upsert)


def _logged(db: CatalogDB) -> tuple[np.ndarray, np.ndarray]:
    """(ids whose rows the catalog holds, every id) logged since the collection was brought level."""
    upsert, delete = (np.array(ids, dtype=np.int64) for ids in db.store_changes_since(db.state().snapshot))
    return upsert, np.union1d(upsert, delete)


def _ids(ids: Iterable[int]) -> str:
    return ",".join(str(int(i)) for i in ids)


def filter_expression(where: Where) -> str:
    """The Milvus boolean expression of ``where``: a category subtree as ``==`` or a prefix ``like``
    (the fast pattern), or, when the category holds LIKE's wildcards, the exact list of categories."""
    parts = []
    if where.category is not None:
        prefix = where.category.strip("/")
        if any(ch in prefix for ch in "%_\\"):
            parts.append(f"category in [{','.join(_quoted(c) for c in where.categories)}]")
        else:
            parts.append(f'(category == {_quoted(prefix)} or category like {_quoted(prefix + "/%")})')
    if where.without_skus:
        parts.append(f"sku not in [{','.join(_quoted(s) for s in sorted(where.without_skus))}]")
    return " and ".join(parts)


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def catch_up(db: CatalogDB, store: MilvusStore, spec: str) -> int:
    """Replay the change log since the generation Milvus was last brought level with (the catalog's
    ``snapshot`` mark) and move the mark; the collection is created (``spec``) if it is missing.
    Call under the writer lock. Returns the rows written or deleted."""
    state = db.state()
    if not store.exists():  # a new index, or a rebuild killed between drop and create
        store.create(spec)
    if state.snapshot == state.generation:
        return 0
    upsert, delete = db.store_changes_since(state.snapshot)
    store.delete(delete)
    for start in range(0, len(upsert), UPSERT_ROWS):
        store.upsert(*db.store_rows(upsert[start:start + UPSERT_ROWS], store.dim))
    store.flush()
    crash_point("store-written")
    with db.transaction():
        db.mark_snapshot(state.generation)
    log.info("Milvus %s: generation %d written (%d upserted, %d deleted)", store.name, state.generation,
             len(upsert), len(delete))
    return len(upsert) + len(delete)


def rebuild(db: CatalogDB, store: MilvusStore, spec: str) -> None:
    """The collection recreated as ``spec`` from every stored vector (a rebuild in place, or another
    index type). A kill part-way is repaired by the next writer: it finds the change log unapplied."""
    store.drop()
    store.create(spec)
    level(db, store)


def level(db: CatalogDB, store: MilvusStore) -> tuple[int, int]:
    """Make the collection hold exactly the catalog's images (every row upserted, every id the
    catalog lacks deleted), then mark the log applied: ``info --repair``. Returns (written, deleted)."""
    generation = db.state().generation
    extra = np.setdiff1d(store.ids(), db.vector_ids()).tolist()
    store.delete(extra)
    written = 0
    for rows in db.store_row_chunks(store.dim):
        store.upsert(*rows)
        written += len(rows[0])
    store.flush()
    with db.transaction():
        db.mark_snapshot(generation)
    return written, len(extra)


class _LiteFailure(logging.Handler):
    """``with _LiteFailure() as f:`` keeps what Milvus Lite logs, with a traceback, when it cannot open
    its folder (``f.cause``: the folder is locked by another process, or damaged), instead of letting
    it reach the user's terminal beside prodsearch's one-line error."""

    def __init__(self):
        super().__init__()
        self.cause: BaseException | None = None
        self.logger = logging.getLogger("milvus_lite.server_manager")

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.cause = record.exc_info[1]

    def __enter__(self) -> _LiteFailure:
        self.logger.addHandler(self)
        self.propagate, self.logger.propagate = self.logger.propagate, False
        return self

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self)
        self.logger.propagate = self.propagate


def _unreachable(target: MilvusTarget, index_dir: Path, uri: str, cause: BaseException | None) -> VectorStoreError:
    if target.is_lite:
        if type(cause).__name__ == "DataDirLockedError":  # milvus_lite.exceptions: not imported for a name
            return _held(index_dir, Path(uri))
        return VectorStoreError(
            f"cannot open Milvus Lite at {uri} ({cause}): another process has it open (a running prodsearch serve "
            "or writer?) or it is damaged; Milvus Lite serves one process at a time: stop the other, or keep the "
            "vectors on a Milvus server (index --milvus-uri http://HOST:19530) to use them from several")
    return VectorStoreError(f"cannot connect to Milvus at {uri} ({getattr(cause, 'message', cause)}); check that the "
                            f"server runs and the URI, and put its token in ${TOKEN_ENV} if it needs one")


def _held(index_dir: Path, lite_dir: Path) -> VectorStoreHeldError:
    """Who holds a Milvus Lite folder, as far as the system tells (``/proc/locks`` on Linux)."""
    pid = flock_holder(lite_dir / LITE_LOCK)
    command = process_command(pid) if pid is not None else None
    server = command is not None and command.startswith("prodsearch serve")
    if pid is None:
        holder = "another process (a running prodsearch serve, or a writer?)"
    else:
        holder = f"{'a running server' if server else 'another process'} (pid {pid}{': ' + command if command else ''})"
    return VectorStoreHeldError(index_dir, holder, server)
