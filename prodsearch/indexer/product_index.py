"""An opened index folder: photos in, ranked SKUs out.

Nearest catalog images are grouped by SKU and a SKU scores its best image's similarity, so a SKU
with many catalog photos is not favoured over one with a single photo.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from prodsearch.errors import CategoryError, IndexDirError
from prodsearch.indexer.catalog_db import CatalogDB, Product
from prodsearch.indexer.manifest import Manifest, check_model, read_manifest
from prodsearch.indexer.store import CATALOG_DB, load_vectors, snapshot_path
from prodsearch.indexer.index_types import set_search_params
from prodsearch.indexer.torch_search import place_for_search
from prodsearch.indexer.vectors import search
from prodsearch.retrieval.device import resolve_device
from prodsearch.retrieval.embedder import Embedder
from prodsearch.retrieval.factory import create_embedder
from prodsearch.retrieval.embedding import FileEmbeddings, embed_files

log = logging.getLogger(__name__)

MAX_OPEN_ATTEMPTS = 5
FUSION_CANDIDATES = 50  # SKUs per photo that compete when several photos are fused


@dataclass(frozen=True)
class Match:
    sku: str
    score: float
    name: str
    category: str | None
    image_id: int
    image_path: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class QueryResult:
    path: str
    matches: list[Match]
    error: str | None = None

    def to_dict(self) -> dict:
        return {"path": self.path, "error": self.error, "matches": [m.to_dict() for m in self.matches]}


@dataclass(frozen=True)
class FusedResult:
    """Several photos of one product, answered together."""

    paths: list[str]
    matches: list[Match]
    errors: dict[str, str]  # photo -> why it was left out

    def to_dict(self) -> dict:
        return {"paths": self.paths, "errors": self.errors, "matches": [m.to_dict() for m in self.matches]}


class ProductIndex:
    """Open with :meth:`open`; search embeddings with :meth:`search` or photos with :meth:`query`.

    It sees the index as it was when opened (one SQLite read snapshot for its lifetime), however
    writers change it meanwhile; open it again to see their changes.
    """

    def __init__(self, index_dir: Path, manifest: Manifest, embedder: Embedder | None = None, *,
                 search_device: str = "auto", search_backend: str | None = None,
                 search_params: dict[str, int] | None = None):
        """Open the files of an index; without an ``embedder`` it can only :meth:`search` vectors.

        Searches run on ``search_device`` (``auto``: the GPU when there is one; see
        :func:`place_for_search`); ``search_backend="torch"`` forces the torch exact search.
        ``search_params`` (``nprobe``, ``efSearch``) override the defaults of approximate indexes.
        """
        self.index_dir = index_dir
        self.manifest = manifest
        self.embedder = embedder
        self.catalog = CatalogDB(index_dir / CATALOG_DB)
        with self.catalog.guarded():
            loaded = self._load_snapshot()
            set_search_params(loaded, **(search_params or {}))
            self.vectors = place_for_search(loaded, lambda: self.catalog.all_vectors(manifest.model.embed_dim),
                                            manifest.index_factory, resolve_device(search_device), search_backend)
            self.image_ids, self.skus, self._image_sku_codes = self.catalog.image_skus()
        if self.vectors.ntotal != len(self.image_ids):
            raise IndexDirError(
                f"{index_dir} is inconsistent ({self.vectors.ntotal} vectors for {len(self.image_ids)} catalog "
                f"images); rebuild it with: prodsearch index CATALOG --index {index_dir}")

    def _load_snapshot(self):
        """The vectors of the generation the catalog shows; a writer may replace the snapshot file
        between reading the catalog and the file, then the read starts again."""
        for _ in range(MAX_OPEN_ATTEMPTS):
            self.catalog.begin_snapshot()
            state = self.catalog.state()
            if snapshot_path(self.index_dir, state.snapshot).is_file():
                try:
                    return load_vectors(self.index_dir, self.catalog, self.manifest.model.embed_dim,
                                        self.manifest.index_factory)
                except RuntimeError:  # faiss: the file vanished while being read
                    pass
            self.catalog.end_snapshot()
        raise IndexDirError(f"{self.index_dir} has no readable vector snapshot; rebuild it with: "
                            f"prodsearch index CATALOG --index {self.index_dir}")

    @classmethod
    def open(cls, index_dir: str | os.PathLike, *, model: str | None = None, embedder: Embedder | None = None,
             search_device: str = "auto", search_params: dict[str, int] | None = None) -> "ProductIndex":
        """Open an index, refusing it if its model differs from the one queries would be embedded with.

        ``model`` defaults to the model named in the manifest; the embedder built from it must
        reproduce the manifest's weights, embedding size and preprocessing exactly.
        """
        index_dir = Path(index_dir)
        manifest = read_manifest(index_dir)
        if embedder is None:
            embedder = embedder_for(manifest, model, index_dir)
        check_model(manifest, embedder.config, index_dir)
        return cls(index_dir, manifest, embedder, search_device=search_device, search_params=search_params)

    def sku_codes(self, ids: np.ndarray) -> np.ndarray:
        """SKU code (index into ``self.skus``) of each image id; -1 where the id is unknown."""
        if len(self.image_ids) == 0:
            return np.full(np.shape(ids), -1, dtype=np.int64)
        pos = np.searchsorted(self.image_ids, ids).clip(0, len(self.image_ids) - 1)
        return np.where(self.image_ids[pos] == ids, self._image_sku_codes[pos], -1)

    def __len__(self) -> int:
        return self.vectors.ntotal

    def search_as_one(self, photos: np.ndarray, top_k: int = 5, category: str | None = None) -> list[Match]:
        """Rank SKUs for several photos of one product (rows of ``photos``) by fusing their evidence.

        Rule: a SKU's score is the mean over the photos of its best image's similarity to each
        photo (a photo where it looks unlike the product lowers it). Candidates are the union of
        each photo's top SKUs; their similarities to every photo are computed exactly from the
        stored vectors, so every candidate is scored on all photos. The match's image is the one
        closest to any photo.
        """
        return self._search_as_one(photos, top_k, self._category_ids(category))

    def _search_as_one(self, photos: np.ndarray, top_k: int, among: np.ndarray | None) -> list[Match]:
        if len(photos) == 0 or len(self) == 0:
            return []
        with self.catalog.guarded():
            return self._fuse(photos, top_k, among)

    def _fuse(self, photos: np.ndarray, top_k: int, among: np.ndarray | None) -> list[Match]:
        per_photo = self._rank_skus(photos, max(top_k, FUSION_CANDIDATES), among)
        candidates = np.unique([code for row in per_photo for code, _, _ in row])
        ids = self.image_ids[np.isin(self._image_sku_codes, candidates)]
        if among is not None:
            ids = np.intersect1d(ids, among)
        sims = photos @ self.catalog.vectors(ids.tolist(), photos.shape[1]).T  # (photos, candidate images)
        codes = self.sku_codes(ids)
        fused = []
        for code in candidates:
            cols = np.flatnonzero(codes == code)
            best = sims[:, cols].max(axis=1)  # each photo's best image of this SKU
            closest = cols[np.argmax(sims[:, cols].max(axis=0))]
            fused.append((int(code), float(best.mean()), int(ids[closest])))
        fused.sort(key=lambda t: -t[1])
        return self._matches([fused[:top_k]])[0]

    def search(self, queries: np.ndarray, top_k: int = 5, category: str | None = None) -> list[list[Match]]:
        """Rank SKUs for each query embedding (rows of ``queries``); with ``category`` only the
        products in that subtree of the category tree (``Fruit`` or ``Fruit/Apple``) compete."""
        return self._search(queries, top_k, self._category_ids(category))

    def _search(self, queries: np.ndarray, top_k: int, among: np.ndarray | None) -> list[list[Match]]:
        if len(queries) == 0 or len(self) == 0:
            return [[] for _ in range(len(queries))]
        return self._matches(self._rank_skus(queries, top_k, among))

    def _matches(self, ranked: list[list[tuple[int, float, int]]]) -> list[list[Match]]:
        """(sku code, score, image id) rows as :class:`Match` lists with the catalog's details."""
        image_ids = {i for row in ranked for _, _, i in row}
        with self.catalog.guarded():
            products = self.catalog.products({self.skus[c] for row in ranked for c, _, _ in row})
            paths = self.catalog.image_paths(image_ids)
        out = []
        for row in ranked:
            matches = []
            for code, score, image_id in row:
                sku = self.skus[code]
                p = products[sku]
                matches.append(Match(sku, float(score), p.name, p.category, int(image_id), paths[image_id]))
            out.append(matches)
        return out

    def products(self, skus: Iterable[str]) -> dict[str, Product]:
        """The catalog's name and category of each SKU it holds."""
        with self.catalog.guarded():
            return self.catalog.products(skus)

    def _category_ids(self, category: str | None) -> np.ndarray | None:
        return self.images_in_category(category) if category else None

    def images_in_category(self, category: str) -> np.ndarray:
        """Ids of the images under ``category``; a category with no products is an error that
        lists the top-level categories there are."""
        with self.catalog.guarded():
            ids = self.catalog.image_ids_in_category(category)
            tops = sorted({c.split("/")[0] for c in self.catalog.categories()}) if len(ids) == 0 else []
        if len(ids) == 0:
            raise CategoryError(f"no products in category {category!r} in {self.index_dir}; "
                                + (f"top-level categories: {', '.join(tops[:20])}" if tops else "its products have no categories"))
        return ids

    def _rank_skus(self, queries: np.ndarray, top_k: int,
                   among: np.ndarray | None = None) -> list[list[tuple[int, float, int]]]:
        """(sku code, best similarity, best image id) per query, best first, ``top_k`` distinct SKUs.

        Searches a few images per wanted SKU and widens the search until enough distinct SKUs are
        found, because one SKU's many photos can fill the nearest neighbours.
        """
        pool = len(self) if among is None else len(among)
        n_skus = len(self.skus) if among is None else len(np.unique(self.sku_codes(among)))
        want = min(top_k, n_skus)
        k = min(pool, max(4 * top_k, 32))
        while True:
            scores, ids = search(self.vectors, queries, k, among)
            codes = self.sku_codes(ids)
            ranked = [_first_per_sku(codes[r], scores[r], ids[r], want) for r in range(len(queries))]
            if k >= pool or all(len(row) >= want for row in ranked):
                return ranked
            k = min(pool, k * 4)

    def embed(self, paths: Sequence[str | os.PathLike], **kwargs) -> FileEmbeddings:
        if self.embedder is None:
            raise ValueError("this ProductIndex was opened without an embedder; use ProductIndex.open")
        return embed_files(self.embedder, paths, **kwargs)

    def query(self, paths: Sequence[str | os.PathLike], top_k: int = 5, category: str | None = None,
              **embed_kwargs) -> list[QueryResult]:
        """Embed photos and rank SKUs for each (within ``category`` if given); unreadable photos
        get an ``error`` instead of matches."""
        among = self._category_ids(category)  # an unknown category fails before any embedding
        embedded = self.embed(paths, **embed_kwargs)
        ranked = dict(zip(embedded.positions.tolist(), self._search(embedded.vectors, top_k, among)))
        return [
            QueryResult(str(p), ranked.get(i, []), embedded.failures.get(i))
            for i, p in enumerate(paths)
        ]

    def query_as_one(self, paths: Sequence[str | os.PathLike], top_k: int = 5, category: str | None = None,
                     **embed_kwargs) -> "FusedResult":
        """Embed several photos of one product and rank SKUs by their fused evidence
        (:meth:`search_as_one`); unreadable photos are left out and reported."""
        among = self._category_ids(category)
        embedded = self.embed(paths, **embed_kwargs)
        errors = {str(paths[i]): reason for i, reason in embedded.failures.items()}
        return FusedResult([str(p) for p in paths], self._search_as_one(embedded.vectors, top_k, among), errors)

    def close(self) -> None:
        self.catalog.close()


def embedder_for(manifest: Manifest, model: str | None, index_dir: Path) -> Embedder:
    """The embedder queries would use: ``model`` if given, else the one the manifest names."""
    built = manifest.model
    if model:
        return create_embedder(model)
    if built.source:
        if not Path(built.source).is_file():
            raise IndexDirError(f"index {index_dir} was built with the checkpoint {built.source}, which is "
                                "not there any more; pass its new path with --model PATH")
        return create_embedder(built.source)
    return create_embedder(built.name, embed_dim=built.embed_dim if built.head else None,
                           img_size=built.data_config["input_size"][-1])


def _first_per_sku(codes: np.ndarray, scores: np.ndarray, ids: np.ndarray, want: int) -> list[tuple[int, float, int]]:
    """Keep each SKU's first (= best) hit, in rank order, until ``want`` SKUs."""
    valid = codes >= 0
    codes, scores, ids = codes[valid], scores[valid], ids[valid]
    _, first = np.unique(codes, return_index=True)
    first = np.sort(first)[:want]
    return list(zip(codes[first].tolist(), scores[first].tolist(), ids[first].tolist()))


def open_index(index_dir: str | os.PathLike, *, model: str | None = None) -> ProductIndex:
    """Shortcut for :meth:`ProductIndex.open`."""
    return ProductIndex.open(index_dir, model=model)
