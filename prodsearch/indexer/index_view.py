"""One generation of an index, in memory: what every answer quotes.

An :class:`IndexView` holds the vector index of one catalog generation with each image's SKU and
path and each SKU's name and category, read in one short SQLite read transaction and never changed
afterwards (its arrays are read-only). :class:`~prodsearch.indexer.product_index.ProductIndex`
answers each call from one view, so an answer is that of one generation, and swaps in a newer view
on :meth:`~prodsearch.indexer.product_index.ProductIndex.refresh`. Paths and names are packed
(:class:`PackedStrings`: their UTF-8 bytes and 9 bytes each), not millions of Python strings.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from prodsearch.indexer.catalog_db import CatalogDB, Product
from prodsearch.indexer.rejection import RejectRule
from prodsearch.indexer.results import Match
from prodsearch.indexer.search_backend import VectorSearch, Where

FUSION_CANDIDATES = 50  # SKUs per photo that compete when several photos are fused


@dataclass(frozen=True)
class PackedStrings:
    """Strings (or ``None``) in one UTF-8 buffer with an end offset each: a catalog's millions of
    image paths and product names in about half the memory of Python strings."""

    blob: bytes
    ends: np.ndarray  # where each string ends in ``blob``
    nulls: np.ndarray  # where the string is None

    @classmethod
    def of(cls, strings: Sequence[str | None]) -> "PackedStrings":
        encoded = [b"" if s is None else s.encode("utf-8", "surrogatepass") for s in strings]
        return cls(b"".join(encoded), _frozen(np.cumsum([len(b) for b in encoded], dtype=np.int64)),
                   _frozen(np.array([s is None for s in strings], dtype=bool)))

    @classmethod
    def concat(cls, parts: Sequence["PackedStrings"]) -> "PackedStrings":
        if not parts:
            return cls.of([])
        shifts = np.cumsum([0] + [len(p.blob) for p in parts[:-1]])
        ends = np.concatenate([p.ends + shift for p, shift in zip(parts, shifts)])
        return cls(b"".join(p.blob for p in parts), _frozen(ends), _frozen(np.concatenate([p.nulls for p in parts])))

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, i: int) -> str | None:
        i = int(i)
        if self.nulls[i]:
            return None
        return self.blob[int(self.ends[i - 1]) if i else 0:int(self.ends[i])].decode("utf-8", "surrogatepass")


@dataclass(frozen=True, eq=False)
class IndexView:
    """One generation of an index as answers need it: the vector index, each image's SKU and path,
    each SKU's name and category. Never changed once built (its arrays are read-only), so threads
    share it without locks (a FAISS GPU index locks itself: see
    :class:`~prodsearch.indexer.search_backend.FaissSearch`)."""

    generation: int
    vectors: VectorSearch
    image_ids: np.ndarray  # sorted
    image_sku_codes: np.ndarray  # each image's index into ``skus``
    paths: PackedStrings  # each image's
    skus: list[str]  # sorted
    names: PackedStrings  # each SKU's
    category_codes: np.ndarray  # each SKU's index into ``categories``; -1: the SKU has no product row
    categories: list[str | None]
    rejection: RejectRule | None = None  # the calibrated "not in catalog" rule of this generation

    def __len__(self) -> int:
        return self.vectors.ntotal

    def sku_codes(self, ids: np.ndarray) -> np.ndarray:
        """SKU code (index into ``skus``) of each image id; -1 where the id is unknown."""
        if len(self.image_ids) == 0:
            return np.full(np.shape(ids), -1, dtype=np.int64)
        pos = np.searchsorted(self.image_ids, ids).clip(0, len(self.image_ids) - 1)
        return np.where(self.image_ids[pos] == ids, self.image_sku_codes[pos], -1)

    def products(self, skus: Iterable[str]) -> dict[str, Product]:
        """The name and category of each of ``skus`` this generation holds."""
        found = {}
        for sku in set(skus):
            code = bisect_left(self.skus, sku)
            if code < len(self.skus) and self.skus[code] == sku and self.category_codes[code] >= 0:
                found[sku] = Product(sku, self.names[code], self.categories[self.category_codes[code]])
        return found

    def image_path(self, image_id: int) -> str:
        return self.paths[np.searchsorted(self.image_ids, image_id)]

    def image_ids_in_category(self, prefix: str) -> np.ndarray:
        """Sorted ids of the images whose product's category is ``prefix`` or below it
        (``Fruit`` holds ``Fruit/Apple`` but not ``Fruitcake``)."""
        prefix = prefix.strip("/")
        wanted = [code for code, category in enumerate(self.categories)
                  if category is not None and (category == prefix or category.startswith(prefix + "/"))]
        return self.image_ids[np.isin(self.category_codes, wanted)[self.image_sku_codes]]

    def top_categories(self) -> list[str]:
        return sorted({c.split("/")[0] for c in self.categories if c})

    def where(self, category: str | None = None, without_skus: frozenset[str] = frozenset()) -> Where | None:
        """The restriction to ``category`` and without ``without_skus`` as fields, for stores that
        filter by them (``None``: no restriction)."""
        if category is None and not without_skus:
            return None
        categories = ()
        if category is not None:
            prefix = category.strip("/")
            categories = tuple(c for c in self.categories if c is not None and (c == prefix or c.startswith(prefix + "/")))
        return Where(category, categories, frozenset(without_skus))

    def answer(self, queries: np.ndarray, top_k: int, among: np.ndarray | None,
               where: Where | None = None) -> list[list[Match]]:
        if len(queries) == 0 or len(self) == 0:
            return [[] for _ in range(len(queries))]
        return self.matches(self.rank_skus(queries, top_k, among, where))

    def fuse(self, photos: np.ndarray, top_k: int, among: np.ndarray | None,
             stored: Callable[[Sequence[int], int], np.ndarray | None], where: Where | None = None) -> list[Match] | None:
        """:meth:`ProductIndex.search_as_one`'s ranking; ``stored(ids, dim)`` reads the candidates'
        stored vectors, ``None`` (returned) when some are gone."""
        if len(photos) == 0 or len(self) == 0:
            return []
        per_photo = self.rank_skus(photos, max(top_k, FUSION_CANDIDATES), among, where)
        candidates = np.unique([code for row in per_photo for code, _, _ in row])
        ids = self.image_ids[np.isin(self.image_sku_codes, candidates)]
        if among is not None:
            ids = np.intersect1d(ids, among)
        vectors = stored(ids.tolist(), photos.shape[1])
        if vectors is None:
            return None
        sims = photos @ vectors.T  # (photos, candidate images)
        codes = self.sku_codes(ids)
        fused = []
        for code in candidates:
            cols = np.flatnonzero(codes == code)
            best = sims[:, cols].max(axis=1)  # each photo's best image of this SKU
            closest = cols[np.argmax(sims[:, cols].max(axis=0))]
            fused.append((int(code), float(best.mean()), int(ids[closest])))
        fused.sort(key=lambda t: -t[1])
        return self.matches([fused[:top_k]])[0]

    def matches(self, ranked: list[list[tuple[int, float, int]]]) -> list[list[Match]]:
        """(sku code, score, image id) rows as :class:`Match` lists with this generation's details."""
        products = self.products({self.skus[c] for row in ranked for c, _, _ in row})
        out = []
        for row in ranked:
            matches = []
            for code, score, image_id in row:
                sku = self.skus[code]
                p = products[sku]
                matches.append(Match(sku, float(score), p.name, p.category, int(image_id), self.image_path(image_id)))
            out.append(matches)
        return out

    def rank_skus(self, queries: np.ndarray, top_k: int, among: np.ndarray | None = None,
                  where: Where | None = None) -> list[list[tuple[int, float, int]]]:
        """(sku code, best similarity, best image id) per query, best first, ``top_k`` distinct SKUs.

        Searches a few images per wanted SKU and widens the search until enough distinct SKUs are
        found, because one SKU's many photos can fill the nearest neighbours.
        """
        pool = len(self) if among is None else len(among)
        n_skus = len(self.skus) if among is None else len(np.unique(self.sku_codes(among)))
        want = min(top_k, n_skus)
        k = min(pool, max(4 * top_k, 32))
        while True:
            scores, ids = self.vectors.search(queries, k, among, where)
            codes = self.sku_codes(ids)
            ranked = [_first_per_sku(codes[r], scores[r], ids[r], want) for r in range(len(queries))]
            if k >= pool or all(len(row) >= want for row in ranked):
                return ranked
            k = min(pool, k * 4)


def read_images(db: CatalogDB) -> tuple[np.ndarray, np.ndarray, PackedStrings, list[str]]:
    """(ids, SKU codes, paths) of every image in id order, and the SKUs sorted, read chunk by chunk."""
    ids, codes, paths, first_seen = [], [], [], {}
    for rows in db.image_chunks():
        ids.append(np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)))
        codes.append(np.fromiter((first_seen.setdefault(r[1], len(first_seen)) for r in rows), dtype=np.int64,
                                 count=len(rows)))
        paths.append(PackedStrings.of([r[2] for r in rows]))
    skus = sorted(first_seen)
    sorted_code = np.empty(len(skus), dtype=np.int64)
    sorted_code[[first_seen[s] for s in skus]] = np.arange(len(skus))
    ids, codes = (np.concatenate(a) if a else np.zeros(0, dtype=np.int64) for a in (ids, codes))
    return _frozen(ids), _frozen(sorted_code[codes]), PackedStrings.concat(paths), skus


def read_products(db: CatalogDB, skus: list[str]) -> tuple[PackedStrings, np.ndarray, list[str | None]]:
    """Each of ``skus``' name and category code (-1: no product row), and the categories."""
    code = {sku: i for i, sku in enumerate(skus)}
    names: list[str | None] = [None] * len(skus)
    category_codes = np.full(len(skus), -1, dtype=np.int64)
    categories: dict[str | None, int] = {}
    for product in db.all_products():
        i = code.get(product.sku)
        if i is not None:
            names[i] = product.name
            category_codes[i] = categories.setdefault(product.category, len(categories))
    return PackedStrings.of(names), _frozen(category_codes), list(categories)


def _frozen(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _first_per_sku(codes: np.ndarray, scores: np.ndarray, ids: np.ndarray, want: int) -> list[tuple[int, float, int]]:
    """Keep each SKU's first (= best) hit, in rank order, until ``want`` SKUs."""
    valid = codes >= 0
    codes, scores, ids = codes[valid], scores[valid], ids[valid]
    _, first = np.unique(codes, return_index=True)
    first = np.sort(first)[:want]
    return list(zip(codes[first].tolist(), scores[first].tolist(), ids[first].tolist()))
