"""An opened index folder: photos in, ranked SKUs out.

Nearest catalog images are grouped by SKU and a SKU scores its best image's similarity, so a SKU
with many catalog photos is not favoured over one with a single photo.

One :class:`ProductIndex` serves many threads at once (a web server's pool). What answers quote is
held in memory as an :class:`IndexView` of one catalog generation, read in one short SQLite
transaction and never changed afterwards; each call takes the current view once and uses only it,
and :meth:`ProductIndex.refresh` swaps in a newer one while calls on the old one finish. So an
answer is that of one generation even when writers have since removed its images or renamed its
products, and no read transaction is held between calls: one would stop SQLite's WAL checkpoints,
and ``catalog.db-wal`` would grow with every write. The view costs memory beside the vector index:
the images' paths and the products' names, packed (their UTF-8 bytes and 9 bytes each).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Collection, Iterable, Sequence

import numpy as np

from prodsearch.errors import CategoryError, IndexDirError, ProdsearchError
from prodsearch.indexer.catalog_db import CatalogDB, Product
from prodsearch.indexer.manifest import Manifest, read_manifest
from prodsearch.indexer.models import encoder_for
from prodsearch.indexer.store import CATALOG_DB, load_vectors, snapshot_path
from prodsearch.indexer.index_types import set_search_params
from prodsearch.indexer.index_view import IndexView, read_images, read_products
from prodsearch.indexer.search_backend import VectorSearch
from prodsearch.indexer.rejection import REJECTION_SETTING, STORED, Decision, RejectRule, Rejection, resolve
from prodsearch.indexer.results import Answer, FusedResult, Match, QueryResult  # noqa: F401  (the answers' types live here too)
from prodsearch.indexer.placement import place_for_search, resolve_search_device
from prodsearch.retrieval.embedding import FileEmbeddings, embed_files
from prodsearch.retrieval.encoders import ModelSource
from prodsearch.retrieval.runtime import Encoder

log = logging.getLogger(__name__)

MAX_OPEN_ATTEMPTS = 5


class ProductIndex:
    """Open with :meth:`open`; search embeddings with :meth:`search` or photos with :meth:`query`.

    Any number of threads may call one instance at once. It answers from the generation it loaded,
    however writers change the index meanwhile, until :meth:`refresh` loads the newest; each call
    uses one :class:`IndexView` throughout, so an answer never mixes generations. No SQLite read
    transaction stays open between calls (each thread reads through its own connection), so a
    long-lived reader never stops the WAL checkpoints that keep ``catalog.db-wal`` small.
    """

    def __init__(self, index_dir: Path, manifest: Manifest, encoder: Encoder | None = None, *,
                 search_device: str = "auto", search_backend: str | None = None,
                 search_params: dict[str, int] | None = None):
        """Open the files of an index; without an ``encoder`` it can only :meth:`search` vectors.

        Searches run on ``search_device`` (``auto``: the GPU when there is one; see
        :func:`place_for_search`); ``search_backend="torch"`` forces the torch exact search.
        ``search_params`` (``nprobe``, ``efSearch``) override the defaults of approximate indexes.
        """
        self.index_dir = index_dir
        self.manifest = manifest
        self.encoder = encoder
        self._search_device, self._search_backend = search_device, search_backend
        self._search_params = dict(search_params or {})
        self._connections: dict[threading.Thread, CatalogDB] = {}
        self._connections_lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._closed = False
        self._milvus = None  # the Milvus collection, opened on first use by an index that keeps its vectors there
        try:
            self._view = self._load_view(self._open_connection())
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(cls, index_dir: str | os.PathLike, *, model: ModelSource | None = None, runtime: str = "auto",
             device: str = "auto", precision: str = "auto", search_device: str = "auto",
             search_params: dict[str, int] | None = None) -> "ProductIndex":
        """Open an index, refusing it if its model differs from the one queries would be embedded with.

        ``model`` (a name, a checkpoint or ONNX file, an embedder or an encoder) defaults to the
        manifest's; it must reproduce the manifest's weights, embedding size and preprocessing
        exactly. Queries run on ``runtime`` (``auto``: ONNX Runtime on the CPU, torch on a GPU).
        """
        index_dir = Path(index_dir)
        manifest = read_manifest(index_dir)
        encoder = encoder_for(manifest, index_dir, model=model, runtime=runtime, device=device, precision=precision)
        return cls(index_dir, manifest, encoder, search_device=search_device, search_params=search_params)

    # ------------------------------------------------------------------ the current generation

    @property
    def generation(self) -> int:
        """The catalog generation answers come from (see :meth:`refresh`)."""
        return self._view.generation

    @property
    def vectors(self) -> VectorSearch:
        """The current generation's vector search (FAISS on the CPU or GPU, or the torch search)."""
        return self._view.vectors

    @property
    def image_ids(self) -> np.ndarray:
        """The current generation's image ids, sorted (read-only)."""
        return self._view.image_ids

    @property
    def skus(self) -> list[str]:
        """The current generation's SKUs, sorted (shared: do not modify)."""
        return self._view.skus

    @property
    def catalog(self) -> CatalogDB:
        """This thread's connection to ``catalog.db``: it sees the newest generation, not
        necessarily the one answers come from."""
        return self._connection()

    def sku_codes(self, ids: np.ndarray) -> np.ndarray:
        """SKU code (index into ``self.skus``) of each image id; -1 where the id is unknown."""
        return self._view.sku_codes(ids)

    def __len__(self) -> int:
        return len(self._view)

    @property
    def rejection(self) -> RejectRule | None:
        """The current generation's calibrated "not in catalog" rule (``None``: uncalibrated)."""
        return self._view.rejection

    def rule(self, rejection: Rejection = STORED) -> RejectRule | None:
        """The rule answers apply for ``rejection`` (see :func:`~prodsearch.indexer.rejection.resolve`)."""
        return resolve(rejection, self._view.rejection)

    def refresh(self) -> bool:
        """Load the newest generation if writers committed since the current one was loaded; calls
        already running finish on the one they started with. Returns whether it changed."""
        with self._refresh_lock:
            db = self._connection()
            with db.guarded():
                if db.state().generation == self._view.generation:
                    return False
            old, self._view = self._view.generation, self._load_view(db)
            log.info("%s: answering from generation %d (was %d)", self.index_dir, self._view.generation, old)
        return True

    def _current(self) -> IndexView:
        if self._closed:
            raise ValueError(f"this ProductIndex of {self.index_dir} is closed")
        return self._view

    def _load_view(self, db: CatalogDB) -> IndexView:
        with db.guarded():
            view = self._read_newest(db)
        if len(view) != len(view.image_ids) and self.manifest.milvus is not None:
            log.warning("%s: Milvus holds %d vectors for %d catalog images (changed behind prodsearch's back?); "
                        "bring it level with: prodsearch info --index %s --repair", self.index_dir,
                        len(view), len(view.image_ids), self.index_dir)
        elif len(view) != len(view.image_ids):
            raise IndexDirError(
                f"{self.index_dir} is inconsistent ({len(view)} vectors for {len(view.image_ids)} catalog "
                f"images); rebuild it with: prodsearch index CATALOG --index {self.index_dir}")
        return view

    def _read_newest(self, db: CatalogDB) -> IndexView:
        """The generation the catalog shows, read in one read transaction that ends before this
        returns. A writer may replace the snapshot file between reading the catalog and the file;
        then the read starts again."""
        for _ in range(MAX_OPEN_ATTEMPTS):
            with db.snapshot():
                view = self._read_view(db)
            if view is not None:
                return view
        raise IndexDirError(f"{self.index_dir} has no readable vector snapshot; rebuild it with: "
                            f"prodsearch index CATALOG --index {self.index_dir}")

    def _read_view(self, db: CatalogDB) -> IndexView | None:
        """The generation ``db``'s read transaction sees; ``None`` if its snapshot file is gone."""
        state, dim, factory = db.state(), self.manifest.model.embed_dim, self.manifest.index_factory
        if self.manifest.milvus is not None:
            placed = self._milvus_search(db)
        elif not snapshot_path(self.index_dir, state.snapshot).is_file():
            return None
        else:
            try:
                loaded = load_vectors(self.index_dir, db, dim, factory)
            except RuntimeError:  # faiss: the file vanished while being read
                return None
            set_search_params(loaded, **self._search_params)
            placed = place_for_search(loaded, lambda: db.all_vectors(dim), factory,
                                      resolve_search_device(self._search_device), self._search_backend)
        ids, codes, paths, skus = read_images(db)
        names, category_codes, categories = read_products(db, skus)
        stored = db.setting(REJECTION_SETTING)
        return IndexView(state.generation, placed, ids, codes, paths, skus, names, category_codes, categories,
                         RejectRule.from_dict(stored) if stored else None)

    def _milvus_search(self, db: CatalogDB) -> VectorSearch:
        """The Milvus collection's search with the change log ``db``'s generation has beyond it applied
        (what a writer committed and has not written to Milvus, or died before writing); the client
        is opened once and shared by every view."""
        from prodsearch.indexer.milvus import MilvusSearch, MilvusStore, Unsynced  # pymilvus: only for such an index
        from prodsearch.indexer.milvus_types import parse_spec

        dim = self.manifest.model.embed_dim
        if self._milvus is None:
            self._milvus = MilvusStore.open(self.manifest.milvus, self.index_dir, dim)
        return MilvusSearch(self._milvus, parse_spec(self.manifest.index_factory)[0], self._search_params,
                            Unsynced(db, dim))

    # ------------------------------------------------------------------ connections

    def _connection(self) -> CatalogDB:
        """This thread's catalog connection, opened on first use: threads must not run statements on
        one connection at once (sqlite-utils keeps transaction state per connection)."""
        db = self._connections.get(threading.current_thread())
        return db if db is not None else self._open_connection()

    def _open_connection(self) -> CatalogDB:
        """A connection for this thread; those of threads that have ended are closed meanwhile, so a
        server that starts a thread per request does not collect them."""
        with self._connections_lock:
            if self._closed:
                raise ValueError(f"this ProductIndex of {self.index_dir} is closed")
            for thread in [t for t in self._connections if not t.is_alive()]:
                self._connections.pop(thread).close()
            db = self._connections[threading.current_thread()] = CatalogDB(self.index_dir / CATALOG_DB,
                                                                           check_same_thread=False)
            return db

    def close(self) -> None:
        """Close every thread's catalog connection (once no call is running)."""
        with self._connections_lock:
            self._closed = True
            for db in self._connections.values():
                db.close()
            self._connections.clear()
            if self._milvus is not None:
                self._milvus.close()
                self._milvus = None

    # ------------------------------------------------------------------ answers

    def search(self, queries: np.ndarray, top_k: int = 5, category: str | None = None, *,
               without_skus: Collection[str] = ()) -> list[list[Match]]:
        """Rank SKUs for each query embedding (rows of ``queries``); with ``category`` only the
        products in that subtree of the category tree (``Fruit`` or ``Fruit/Apple``) compete, and
        never those of ``without_skus`` (calibration plays them as products the shop does not sell)."""
        view = self._current()
        among = self._category_ids(view, category)
        if without_skus:
            without = set(without_skus)
            left_out = [code for code, sku in enumerate(view.skus) if sku in without]
            kept = view.image_ids[~np.isin(view.image_sku_codes, left_out)]
            among = kept if among is None else np.intersect1d(among, kept)
        return view.answer(queries, top_k, among, view.where(category, frozenset(without_skus)))

    def search_as_one(self, photos: np.ndarray, top_k: int = 5, category: str | None = None) -> list[Match]:
        """Rank SKUs for several photos of one product (rows of ``photos``) by fusing their evidence.

        Rule: a SKU's score is the mean over the photos of its best image's similarity to each
        photo (a photo where it looks unlike the product lowers it). Candidates are the union of
        each photo's top SKUs; their similarities to every photo are computed exactly from the
        stored vectors, so every candidate is scored on all photos. The match's image is the one
        closest to any photo. Those vectors are read from the catalog: where writers have removed
        some since the current generation, the index refreshes and answers from the newest.
        """
        view = self._current()
        return self._fused(view, photos, top_k, category, self._category_ids(view, category)).matches

    def identify(self, photos: np.ndarray, top_k: int = 5, category: str | None = None,
                 rejection: Rejection = STORED) -> Answer:
        """Which SKU are these photos of (rows of ``photos``, one product)? Ranked SKUs with the
        generation that answered and, under a "not in catalog" rule (``rejection``, the stored one
        by default), whether the first is accepted: one photo is ranked as :meth:`search` does,
        several are fused as :meth:`search_as_one` does."""
        view = self._current()
        among = self._category_ids(view, category)
        rule = resolve(rejection, view.rejection)
        if len(photos) == 1:
            matches, decision = decided(view.answer(photos, wanted(top_k, rule), among, view.where(category))[0],
                                        top_k, rule)
            return Answer(view.generation, matches, decision)
        fused = self._fused(view, photos, wanted(top_k, rule), category, among)
        return Answer(fused.generation, *decided(fused.matches, top_k, rule))

    def _fused(self, view: IndexView, photos: np.ndarray, top_k: int, category: str | None,
               among: np.ndarray | None) -> Answer:
        """:meth:`IndexView.fuse` with the candidates' stored vectors, the only rows an answer reads
        from SQLite. A stored vector never changes, but images removed since the view's generation
        have none any more: then the answer comes from the newest generation instead."""
        for _ in range(MAX_OPEN_ATTEMPTS):
            db = self._connection()
            with db.guarded():
                fused = view.fuse(photos, top_k, among, db.vectors_if_stored, view.where(category))
            if fused is not None:
                return Answer(view.generation, fused)
            view = self._newer_than(view, db)
            among = self._category_ids(view, category)
        raise ProdsearchError(f"{self.index_dir} changed {MAX_OPEN_ATTEMPTS} times while these photos were compared "
                              "with it; ask again")

    def _newer_than(self, view: IndexView, db: CatalogDB) -> IndexView:
        self.refresh()
        newest = self._current()
        if newest is view:
            raise IndexDirError(f"{db.path} is damaged (images without a stored vector); rebuild the index: "
                                f"prodsearch index CATALOG --index {self.index_dir}")
        return newest

    def products(self, skus: Iterable[str]) -> dict[str, Product]:
        """The name and category of each SKU the index holds."""
        return self._current().products(skus)

    def _category_ids(self, view: IndexView, category: str | None) -> np.ndarray | None:
        return self._images_in_category(view, category) if category else None

    def images_in_category(self, category: str) -> np.ndarray:
        """Ids of the images under ``category``; a category with no products is an error that
        lists the top-level categories there are."""
        return self._images_in_category(self._current(), category)

    def _images_in_category(self, view: IndexView, category: str) -> np.ndarray:
        ids = view.image_ids_in_category(category)
        if len(ids) == 0:
            tops = view.top_categories()
            raise CategoryError(f"no products in category {category!r} in {self.index_dir}; "
                                + (f"top-level categories: {', '.join(tops[:20])}" if tops else "its products have no categories"))
        return ids

    def embed(self, paths: Sequence[str | os.PathLike], **kwargs) -> FileEmbeddings:
        """:func:`~prodsearch.retrieval.embedding.embed_files` with the index's encoder and views (a
        query must be embedded as the catalog was), and ``batch_size``, ``num_workers``, ``progress``."""
        if self.encoder is None:
            raise ValueError("this ProductIndex was opened without an encoder; use ProductIndex.open")
        return embed_files(self.encoder, paths, views=self.manifest.views, **kwargs)

    def query(self, paths: Sequence[str | os.PathLike], top_k: int = 5, category: str | None = None,
              rejection: Rejection = STORED, **embed_kwargs) -> list[QueryResult]:
        """Embed photos and rank SKUs for each (within ``category`` if given), each accepted or
        rejected by the "not in catalog" rule (``rejection``: see :meth:`identify`); unreadable
        photos get an ``error`` instead of matches."""
        view = self._current()
        among = self._category_ids(view, category)  # an unknown category fails before any embedding
        rule = resolve(rejection, view.rejection)
        embedded = self.embed(paths, **embed_kwargs)
        ranked = dict(zip(embedded.positions.tolist(),
                          view.answer(embedded.vectors, wanted(top_k, rule), among, view.where(category))))
        results = []
        for i, p in enumerate(paths):
            matches, decision = decided(ranked[i], top_k, rule) if i in ranked else ([], None)
            results.append(QueryResult(str(p), matches, embedded.failures.get(i), decision))
        return results

    def query_as_one(self, paths: Sequence[str | os.PathLike], top_k: int = 5, category: str | None = None,
                     rejection: Rejection = STORED, **embed_kwargs) -> "FusedResult":
        """Embed several photos of one product and rank SKUs by their fused evidence
        (:meth:`search_as_one`), accepted or rejected as :meth:`query` does; unreadable photos are
        left out and reported."""
        view = self._current()
        among = self._category_ids(view, category)
        rule = resolve(rejection, view.rejection)
        embedded = self.embed(paths, **embed_kwargs)
        errors = {str(paths[i]): reason for i, reason in embedded.failures.items()}
        fused = self._fused(view, embedded.vectors, wanted(top_k, rule), category, among).matches
        matches, decision = decided(fused, top_k, rule)
        return FusedResult([str(p) for p in paths], matches, errors, decision)


def wanted(top_k: int, rule: RejectRule | None) -> int:
    """SKUs to rank: a rule reads the second SKU even when one is asked for."""
    return max(top_k, 2) if rule is not None else top_k


def decided(matches: list[Match], top_k: int, rule: RejectRule | None) -> tuple[list[Match], Decision | None]:
    """The first ``top_k`` matches and the rule's decision on them (``None`` without a rule)."""
    decision = rule.decide([m.score for m in matches]) if rule is not None and matches else None
    return matches[:top_k], decision


def open_index(index_dir: str | os.PathLike, **kwargs) -> ProductIndex:
    """Shortcut for :meth:`ProductIndex.open`."""
    return ProductIndex.open(index_dir, **kwargs)
