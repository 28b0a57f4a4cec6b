"""The catalog database (SQLite through sqlite-utils): the source of truth of an index.

It holds the products, their images, every image's embedding, and a log of the changes made since
the last FAISS snapshot was written. Each write is one SQLite transaction, so the catalog and the
vectors it describes change together or not at all; in WAL mode readers keep a consistent snapshot
while a writer works. The FAISS files beside it are derived from it (see :mod:`.store`).

Image ids are never reused (``meta.next_id``), so a change log of ids is unambiguous.

Vectors are stored as float16, half the size of float32: embeddings are L2-normalised, so every
component is in [-1, 1], where float16 keeps about 3 significant digits (relative error at most
2**-11), and a cosine similarity moves by at most 5e-4, well below what tells products apart.
Readers get float32 (FAISS needs it) and still read float32 blobs, which catalogs written before
float16 storage hold; a blob's length says which it is, so an old catalog that got new images
holds both.
"""

from __future__ import annotations

import json
import os
import sqlite3
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import compress
from pathlib import Path
from typing import Container, Iterable, Iterator, Sequence

import numpy as np
import sqlite_utils

from prodsearch.errors import IndexDirError, ReadOnlyIndexError
from prodsearch.indexer import uploads

_CHUNK = 500  # values per "in (...)" list: SQLite caps bound parameters per statement
SCHEMA_VERSION = 1
STORED_DTYPE = np.dtype(np.float16)  # what writes store (see the module docstring for why)
READ_DTYPES = (STORED_DTYPE, np.dtype(np.float32))  # float32: catalogs written before float16 storage
# SQLite keeps a row that fits in a page whole, so its default 4 KiB pages hold one 1280-d float16
# vector (2560 bytes) each and float16 would save a quarter, not half; 16 KiB pages hold six.
# Set for new catalogs only: a page size is fixed once WAL is on.
PAGE_SIZE = 16384
# The ``meta`` key of catalogs whose upload paths are all relative to the index folder (see
# :meth:`CatalogDB.adopt_uploads`): set at creation, or once an older catalog's paths were adopted.
UPLOADS_RELATIVE = "uploads_relative"
OWNED_PREFIX = uploads.UPLOADS + "/"  # how a path the index folder owns starts in the catalog


def stored_dtype(nbytes: int, dim: int) -> np.dtype | None:
    """The dtype of a stored ``dim``-d vector blob of ``nbytes`` bytes; ``None`` if no dtype fits."""
    return next((dtype for dtype in READ_DTYPES if dtype.itemsize * dim == nbytes), None)


def can_write(path: Path, mode: int = os.W_OK) -> bool:
    """Whether this process may write ``path`` (the effective user counts: setuid programs, tests
    that drop privileges); a read-only file system says no even to root."""
    return os.access(path, mode, effective_ids=os.access in os.supports_effective_ids)


def catalog_writable(path: Path) -> bool:
    """Whether this process can write the catalog database ``path`` and beside it (WAL mode creates
    ``-wal`` and ``-shm`` files there)."""
    return can_write(path) and can_write(path.parent, os.W_OK | os.X_OK)


def _read_only_uri(path: Path) -> str:
    """How to read a catalog this process cannot write. A writer's WAL files beside it (``-wal``
    and ``-shm``) mean it may change meanwhile: read-only mode, which honours them. Without them
    no writer is active and all data is in the file: ``immutable``, which needs no lock file
    (a read-only volume has none to offer)."""
    wal, shm = (path.with_name(path.name + suffix) for suffix in ("-wal", "-shm"))
    uri = "file:" + urllib.parse.quote(str(path.resolve()))
    if wal.is_file() and wal.stat().st_size and shm.is_file():
        return uri + "?mode=ro"
    if wal.is_file() and wal.stat().st_size:
        raise IndexDirError(f"the index {path.parent} is read-only and {wal.name} holds changes not yet folded into "
                            f"{path.name}; open it once where it can be written (prodsearch info --index DIR) before "
                            "shipping it read-only")
    return uri + "?immutable=1"


@dataclass(frozen=True)
class Product:
    sku: str
    name: str
    category: str | None


@dataclass(frozen=True)
class State:
    generation: int  # bumped by every committed write
    snapshot: int  # the generation the newest FAISS snapshot file reflects
    next_id: int


class CatalogDB:
    """A connection to ``catalog.db``. Readers call :meth:`begin_snapshot` to see one generation
    throughout, and :meth:`end_snapshot` soon after: while a read transaction is open, SQLite cannot
    checkpoint the WAL past it and the ``-wal`` file grows with every write. Writers group changes
    in ``with db.transaction():``. Every statement prodsearch runs on an index is in this class."""

    def __init__(self, path: str | os.PathLike, *, create: bool = False, write: bool = False,
                 check_same_thread: bool = True):
        """Open ``catalog.db``; ``create`` a new one, or open it to ``write`` (raises
        :class:`IndexDirError` on a read-only index). A reader of an index folder it cannot write
        (a read-only volume, another user's files) opens it read-only; see :func:`_read_only_uri`.
        ``check_same_thread=False`` lets another thread close the connection (sqlite3's flag); it is
        still meant to be used by one thread at a time."""
        path = Path(path)
        if not create and not path.is_file():
            raise FileNotFoundError(path)
        self.path = path
        # Paths of files the index owns (uploads) are recorded relative to its folder and given out
        # absolute, against wherever the folder is now.
        self.root = Path(os.path.abspath(path.parent))
        self._prefix = str(self.root) + os.sep
        if not create and not catalog_writable(path):
            if write:
                raise ReadOnlyIndexError(path.parent, f"this user cannot write {path.name} or its folder")
            self.db = sqlite_utils.Database(sqlite3.connect(_read_only_uri(path), uri=True,
                                                            check_same_thread=check_same_thread))
        else:
            self.db = sqlite_utils.Database(sqlite3.connect(str(path), check_same_thread=check_same_thread))
        self.db.execute("PRAGMA busy_timeout = 30000")
        if create:
            self._create_schema()
        with self.guarded():
            self.state()  # a file that is not a catalog database fails here, with a clear message

    @contextmanager
    def guarded(self) -> Iterator[None]:
        """Turn SQLite's reports of a damaged file (truncated, overwritten, not a catalog at all)
        into :class:`IndexDirError` saying how to rebuild; a busy or locked database is not damage."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            if not str(exc).startswith(("no such table", "no such column")):
                raise
            raise self._damaged(exc) from None
        except sqlite3.DatabaseError as exc:
            raise self._damaged(exc) from None

    def _damaged(self, exc: Exception) -> IndexDirError:
        return IndexDirError(f"{self.path} is damaged ({exc}); rebuild the index: prodsearch index CATALOG "
                             f"--index {self.path.parent}")

    def _create_schema(self) -> None:
        db = self.db
        db.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # before the first write
        db.enable_wal()
        db.execute("PRAGMA synchronous = FULL")
        db["products"].create({"sku": str, "name": str, "category": str}, pk="sku")
        db["images"].create(
            {"id": int, "sku": str, "path": str, "md5": str, "width": int, "height": int, "size": int, "mtime": float},
            pk="id", foreign_keys=[("sku", "products", "sku")],
        )
        db["images"].create_index(["sku", "md5"], unique=True)
        db["images"].create_index(["path"])
        db["images"].create_index(["md5"])  # which uploads some image still has (content, not path)
        db["vectors"].create({"id": int, "vector": bytes}, pk="id")
        db["changes"].create({"generation": int, "image_id": int, "op": str})
        db["changes"].create_index(["generation"])
        db["meta"].create({"key": str, "value": int}, pk="key")
        db["settings"].create({"key": str, "value": str}, pk="key")
        db["meta"].insert_all([{"key": k, "value": v} for k, v in
                               (("schema", SCHEMA_VERSION), ("generation", 0), ("snapshot", 0), ("next_id", 0),
                                (UPLOADS_RELATIVE, 1))])

    # ------------------------------------------------------------------ reading

    def begin_snapshot(self) -> None:
        """Start a read transaction: until :meth:`end_snapshot`, every read sees one generation."""
        if not self.db.conn.in_transaction:
            self.db.execute("BEGIN")
            self.db.execute("SELECT 1 FROM meta LIMIT 1")  # WAL snapshots are taken at the first read

    def end_snapshot(self) -> None:
        if self.db.conn.in_transaction:
            self.db.conn.rollback()

    @contextmanager
    def snapshot(self) -> Iterator["CatalogDB"]:
        """:meth:`begin_snapshot` and :meth:`end_snapshot` around a block: its reads see one generation."""
        self.begin_snapshot()
        try:
            yield self
        finally:
            self.end_snapshot()

    def state(self) -> State:
        meta = dict(self.db.execute("select key, value from meta").fetchall())
        return State(meta["generation"], meta["snapshot"], meta["next_id"])

    def setting(self, key: str) -> dict | None:
        """A setting stored with the catalog (``rejection``: the calibrated rule), ``None`` if unset;
        catalogs written before settings existed have none."""
        if not self.db["settings"].exists():
            return None
        row = self.db.execute("select value from settings where key = ?", [key]).fetchone()
        return None if row is None else json.loads(row[0])

    def products(self, skus: Iterable[str]) -> dict[str, Product]:
        rows = self._run_in("select sku, name, category from products where sku in ({})", set(skus))
        return {r[0]: Product(*r) for r in rows}

    def all_products(self, rows: int = 100_000) -> Iterator[Product]:
        """Every product, read ``rows`` at a time."""
        cursor = self.db.execute("select sku, name, category from products")
        while batch := cursor.fetchmany(rows):
            yield from (Product(*r) for r in batch)

    def image_chunks(self, rows: int = 100_000) -> Iterator[list[tuple[int, str, str]]]:
        """(id, sku, path) of every image in id order, ``rows`` at a time: what a reader keeps of
        each image, read without holding millions of rows at once."""
        cursor = self.db.execute("select id, sku, path from images order by id")
        while batch := cursor.fetchmany(rows):
            yield [(i, sku, self._full(path)) for i, sku, path in batch]

    def image_keys(self) -> set[tuple[str, str]]:
        """(SKU, MD5) of every image: what a resumed build has committed already."""
        return {(r[0], r[1]) for r in self.db.execute("select sku, md5 from images")}

    def images_not_in(self, keys: Container[tuple[str, str]], rows: int = 100_000) -> list[tuple[int, str, str]]:
        """(id, SKU, path) of the images whose (SKU, MD5) is not among ``keys``, read ``rows`` at a
        time: what a catalog no longer lists, found without holding every image row."""
        cursor, out = self.db.execute("select id, sku, md5, path from images"), []
        while batch := cursor.fetchmany(rows):
            out += [(i, sku, self._full(path)) for i, sku, md5, path in batch if (sku, md5) not in keys]
        return out

    def held_images(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], tuple[int, str]]:
        """(id, path) of the images the index holds of ``keys`` ((SKU, MD5) pairs), looked up by MD5."""
        keys = set(keys)
        rows = self._run_in("select id, sku, md5, path from images where md5 in ({})", {md5 for _, md5 in keys})
        return {(sku, md5): (i, self._full(path)) for i, sku, md5, path in rows if (sku, md5) in keys}

    def file_infos(self, paths: Iterable[str]) -> dict[str, tuple[str, int, float]]:
        """(MD5, size, mtime) the index recorded for each of ``paths`` it holds: hashes not computed again."""
        asked = self._as_stored(paths)
        rows = self._run_in("select path, md5, size, mtime from images where path in ({})", set(asked))
        return {asked[path]: (md5, size, mtime) for path, md5, size, mtime in rows}

    def all_skus(self) -> set[str]:
        return {r[0] for r in self.db.execute("select sku from products")}

    def image_paths(self, ids: Iterable[int]) -> dict[int, str]:
        rows = self._run_in("select id, path from images where id in ({})", {int(i) for i in ids})
        return {i: self._full(path) for i, path in rows}

    def image_rows(self) -> list[dict]:
        return [{**row, "path": self._full(row["path"])} for row in self.db["images"].rows]

    def vectors(self, ids: Sequence[int], dim: int) -> np.ndarray:
        """The stored embeddings of ``ids``, in that order, as float32."""
        ids, found = self._stored_blobs(ids)
        return self._decode(ids, [found[i] for i in ids], dim)

    def vectors_if_stored(self, ids: Sequence[int], dim: int) -> np.ndarray | None:
        """Like :meth:`vectors`, or ``None`` if some of ``ids`` are stored no more. A stored vector never
        changes (ids are not reused), so one read outside any transaction is the vector of every
        generation that holds the image."""
        ids, found = self._stored_blobs(ids)
        if len(found) < len(set(ids)):
            return None
        return self._decode(ids, [found[i] for i in ids], dim)

    def _stored_blobs(self, ids: Sequence[int]) -> tuple[list[int], dict[int, bytes]]:
        ids = [int(i) for i in ids]
        return ids, dict(self._run_in("select id, vector from vectors where id in ({})", set(ids)))

    def all_vectors(self, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, float32 vectors) of every image, for writing a full FAISS snapshot."""
        rows = self.db.execute("select id, vector from vectors order by id").fetchall()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        return ids, self._decode(ids, [r[1] for r in rows], dim)

    def vector_chunks(self, dim: int, rows: int = 100_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, float32 vectors) of every image, ``rows`` at a time in id order: a rebuild of millions
        of vectors never holds them all as float32 (12.4M x 512 would be 25 GB)."""
        cursor = self.db.execute("select id, vector from vectors order by id")
        while batch := cursor.fetchmany(rows):
            ids = np.fromiter((r[0] for r in batch), dtype=np.int64, count=len(batch))
            yield ids, self._decode(ids, [r[1] for r in batch], dim)

    def sample_image_paths(self, n: int) -> list[str]:
        """Up to ``n`` image paths spread over the catalog, the same ones every time (calibration
        photos: the catalog's own, in a fixed pseudo-random order rather than its first SKUs)."""
        return [self._full(r[0]) for r in self.db.execute(
            "select path from images order by (id * 2654435761) % 4294967296, id limit ?", [n])]

    def image_ids(self) -> np.ndarray:
        """Every image id, sorted."""
        return np.array([r[0] for r in self.db.execute("select id from images order by id")], dtype=np.int64)

    def orphan_product_count(self) -> int:
        """Products without images (a write removes them; any left mean damage)."""
        return self.db.execute("select count(*) from products where sku not in (select sku from images)").fetchone()[0]

    def pending_changes(self) -> int:
        """Changes logged since the newest FAISS snapshot: what opening the index applies to it."""
        snapshot = self.state().snapshot
        return self.db.execute("select count(*) from changes where generation > ?", [snapshot]).fetchone()[0]

    def vector_ids(self) -> np.ndarray:
        return np.array([r[0] for r in self.db.execute("select id from vectors order by id")], dtype=np.int64)

    def stored_sizes(self) -> dict[int, int]:
        """Blob length -> number of stored vectors: what ``info`` reports of the storage."""
        return dict(self.db.execute("select length(vector), count(*) from vectors group by 1").fetchall())

    def _decode(self, ids: Sequence[int], blobs: list[bytes], dim: int) -> np.ndarray:
        """Blobs as one float32 (n, dim) array: one ``frombuffer`` per stored dtype, not one per row."""
        lengths = np.fromiter(map(len, blobs), dtype=np.int64, count=len(blobs))
        bad = np.flatnonzero(~np.isin(lengths, [dtype.itemsize * dim for dtype in READ_DTYPES]))
        if len(bad):
            raise IndexDirError(
                f"{self.path} is damaged: the stored vector of image {ids[bad[0]]} is {lengths[bad[0]]} bytes "
                f"({len(bad)} vectors have a wrong size); a {dim}-d vector is {2 * dim} bytes (float16) or "
                f"{4 * dim} (float32); rebuild the index: prodsearch index CATALOG --index {self.path.parent}")
        out = np.empty((len(blobs), dim), dtype=np.float32)
        for dtype in READ_DTYPES:
            rows = lengths == dtype.itemsize * dim
            if rows.any():
                part = np.frombuffer(b"".join(compress(blobs, rows)), dtype=dtype).reshape(-1, dim)
                out[slice(None) if rows.all() else rows] = part
        return out

    def changes_since(self, generation: int) -> tuple[list[int], list[int]]:
        """Net (added, removed) image ids after ``generation``: what a snapshot must catch up on."""
        rows = self.db.execute("select image_id, op from changes where generation > ?", [generation]).fetchall()
        added = {i for i, op in rows if op == "add"}
        removed = {i for i, op in rows if op == "remove"}
        return sorted(added - removed), sorted(removed - added)

    def store_changes_since(self, generation: int) -> tuple[list[int], list[int]]:
        """(ids to upsert, ids to delete) that bring a vector store level from ``generation``: added
        images and those whose product's category changed (``meta``), less the removed. Replaying
        them twice changes nothing (upsert and delete by primary key)."""
        rows = self.db.execute("select image_id, op from changes where generation > ?", [generation]).fetchall()
        removed = {i for i, op in rows if op == "remove"}
        return sorted({i for i, op in rows if op != "remove"} - removed), sorted(removed)

    def store_rows(self, ids: Sequence[int], dim: int) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
        """(ids, float32 vectors, SKUs, categories) of ``ids`` that are stored, in id order: a vector
        store's rows ("" for a product without a category)."""
        rows = sorted(self._run_in(
            "select v.id, v.vector, i.sku, coalesce(p.category, '') from vectors v join images i on i.id = v.id "
            "join products p on p.sku = i.sku where v.id in ({})", {int(i) for i in ids}))
        return self._store_rows(rows, dim)

    def store_row_chunks(self, dim: int, rows: int = 20_000) -> Iterator[tuple[np.ndarray, np.ndarray, list[str], list[str]]]:
        """Every image as :meth:`store_rows` gives them, ``rows`` at a time in id order."""
        cursor = self.db.execute(
            "select v.id, v.vector, i.sku, coalesce(p.category, '') from vectors v join images i on i.id = v.id "
            "join products p on p.sku = i.sku order by v.id")
        while batch := cursor.fetchmany(rows):
            yield self._store_rows(batch, dim)

    def _store_rows(self, rows: list[tuple], dim: int) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        return ids, self._decode(ids, [r[1] for r in rows], dim), [r[2] for r in rows], [r[3] for r in rows]

    def integrity_problem(self) -> str | None:
        """SQLite's quick check of every page (reads the whole file): ``None`` when it finds nothing."""
        check = self.db.execute("PRAGMA quick_check").fetchone()[0]
        return None if check == "ok" else check

    def counts(self) -> dict[str, int]:
        return {name: self.db[name].count for name in ("products", "images", "vectors")}

    def _run_in(self, sql: str, values: set) -> list[tuple]:
        """Run ``sql`` with its ``in ({})`` list filled in chunks; return the rows it selects."""
        values, rows = sorted(values), []
        for start in range(0, len(values), _CHUNK):
            chunk = values[start:start + _CHUNK]
            rows += self.db.execute(sql.format(",".join("?" * len(chunk))), chunk).fetchall()
        return rows

    # ------------------------------------------------------------------ browsing (the HTTP API's catalog pages)

    def browse_products(self, *, limit: int, offset: int = 0, category: str | None = None,
                        text: str | None = None) -> tuple[int, list[dict]]:
        """(how many match, one page of them by SKU): each product's sku, name, category, number of
        images and first image id; ``category`` a subtree (``Fruit`` holds ``Fruit/Apple``), ``text``
        a case-insensitive substring of the SKU or the name."""
        where, values = _product_filter(category, text)
        total = self.db.execute(f"select count(*) from products p where {where}", values).fetchone()[0]
        rows = self.db.execute(
            "select p.sku, p.name, p.category, count(i.id), min(i.id) from products p join images i on i.sku = p.sku "
            f"where {where} group by p.sku order by p.sku limit ? offset ?", [*values, limit, offset]).fetchall()
        keys = ("sku", "name", "category", "images", "image_id")
        return total, [dict(zip(keys, r)) for r in rows]

    def product_images(self, sku: str) -> list[dict]:
        """Id, width and height of each of a product's images, by id."""
        rows = self.db.execute("select id, width, height from images where sku = ? order by id", [sku]).fetchall()
        return [{"image_id": r[0], "width": r[1], "height": r[2]} for r in rows]

    def category_counts(self) -> dict[str | None, int]:
        """Products per category (``None``: products without one)."""
        return dict(self.db.execute("select category, count(*) from products group by category").fetchall())

    def image(self, image_id: int) -> dict | None:
        """One image's row (sku, path, md5, size in bytes, ...), or ``None``."""
        keys = ("id", "sku", "path", "md5", "width", "height", "size")
        row = self.db.execute(f"select {', '.join(keys)} from images where id = ?", [int(image_id)]).fetchone()
        return None if row is None else {**dict(zip(keys, row)), "path": self._full(row[2])}

    def paths_in_use(self, paths: Iterable[str]) -> set[str]:
        """Those of ``paths`` some image still has."""
        asked = self._as_stored(paths)
        return {asked[r[0]] for r in self._run_in("select distinct path from images where path in ({})", set(asked))}

    def md5s_in_use(self, md5s: Iterable[str]) -> set[str]:
        """Those of ``md5s`` some image still has: whether an uploaded file is still used (its name
        is its content's MD5; two servers may name the same folder differently)."""
        return {r[0] for r in self._run_in("select distinct md5 from images where md5 in ({})", set(md5s))}

    def _full(self, path: str) -> str:
        """A recorded path as a path to open: those the index folder owns, inside it."""
        return self._prefix + path if path.startswith(OWNED_PREFIX) else path

    def _stored(self, path: str) -> str:
        """How the catalog records ``path``: relative to the index folder if the folder owns it."""
        return uploads.relative(self.root, path) or path

    def _as_stored(self, paths: Iterable[str]) -> dict[str, str]:
        return {self._stored(p): p for p in paths}

    # ------------------------------------------------------------------ writing (inside db.transaction())

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One SQLite transaction: everything inside is committed together, or nothing."""
        with self.db.atomic():
            yield

    def upsert_products(self, products: Iterable[dict], generation: int | None = None) -> None:
        """Insert or update products; with ``generation``, log a ``meta`` change for every image of a
        product whose category changes (a vector store keeps each image's category to filter on)."""
        products = list(products)
        if generation is not None:
            held = self.products(p["sku"] for p in products)
            moved = [p["sku"] for p in products if p["sku"] in held and held[p["sku"]].category != p.get("category")]
            ids = [r[0] for r in self._run_in("select id from images where sku in ({})", set(moved))]
            self.db["changes"].insert_all({"generation": generation, "image_id": i, "op": "meta"} for i in ids)
        self.db["products"].upsert_all(products, pk="sku")

    def add_images(self, images: list[dict], vectors: np.ndarray, generation: int) -> list[int]:
        """Insert images (without ids) and their vectors (stored as float16); return the ids given to them."""
        start = self.state().next_id
        ids = list(range(start, start + len(images)))
        self.db["images"].insert_all({**img, "path": self._stored(img["path"]), "id": i} for img, i in zip(images, ids))
        vectors = np.ascontiguousarray(vectors, dtype=STORED_DTYPE)
        self.db["vectors"].insert_all({"id": i, "vector": v.tobytes()} for i, v in zip(ids, vectors))
        self.db["changes"].insert_all({"generation": generation, "image_id": i, "op": "add"} for i in ids)
        self._set("next_id", start + len(images))
        return ids

    def remove_images(self, ids: Iterable[int], generation: int) -> None:
        ids = {int(i) for i in ids}
        self._run_in("delete from vectors where id in ({})", ids)
        self._run_in("delete from images where id in ({})", ids)
        self.db["changes"].insert_all({"generation": generation, "image_id": i, "op": "remove"} for i in sorted(ids))

    def update_paths(self, paths: dict[int, str]) -> None:
        """New file paths of images whose file moved (same SKU and content)."""
        self.db.conn.executemany("update images set path = ? where id = ?",
                                 [(self._stored(p), i) for i, p in paths.items()])

    def adopt_uploads(self) -> int:
        """Once per catalog (under the writer lock): record the uploads an older prodsearch recorded
        absolute or relative to a server's working directory relative to the index folder, so that
        they serve wherever the folder is; returns how many. Uploads are then found by content."""
        if self.db.execute("select 1 from meta where key = ?", [UPLOADS_RELATIVE]).fetchone():
            return 0
        rows = self.db.execute(f"select id, path, md5 from images where path like '%{uploads.UPLOADS}%' "
                               "and substr(path, 1, ?) != ?", [len(OWNED_PREFIX), OWNED_PREFIX]).fetchall()
        adopted = {i: rel for i, path, md5 in rows if (rel := uploads.legacy_relative(self.root, path, md5))}
        with self.transaction():
            self.db.conn.executemany("update images set path = ? where id = ?", [(p, i) for i, p in adopted.items()])
            self.db["images"].create_index(["md5"], if_not_exists=True)
            self.db["meta"].insert({"key": UPLOADS_RELATIVE, "value": 1})
        return len(adopted)

    def remove_orphan_products(self) -> list[str]:
        """Delete products left without images; return their SKUs."""
        orphans = [r[0] for r in self.db.execute(
            "select sku from products where sku not in (select distinct sku from images)").fetchall()]
        self._run_in("delete from products where sku in ({})", set(orphans))
        return orphans

    def set_setting(self, key: str, value: dict | None) -> None:
        """Store (or with ``None`` delete) a setting, creating the table in catalogs older than it."""
        self.db["settings"].create({"key": str, "value": str}, pk="key", if_not_exists=True)
        if value is None:
            self.db.execute("delete from settings where key = ?", [key])
        else:
            self.db["settings"].upsert({"key": key, "value": json.dumps(value)}, pk="key")

    def set_generation(self, generation: int) -> None:
        self._set("generation", generation)

    def mark_snapshot(self, generation: int) -> None:
        """Record that a FAISS snapshot of ``generation`` exists; its change log is no longer needed."""
        self._set("snapshot", generation)
        self.db.execute("delete from changes where generation <= ?", [generation])

    def _set(self, key: str, value: int) -> None:
        self.db.execute("update meta set value = ? where key = ?", [value, key])

    def close(self) -> None:
        self.end_snapshot()
        self.db.close()


def _product_filter(category: str | None, text: str | None) -> tuple[str, list]:
    """The ``where`` clause (on ``products p``) and its values for :meth:`CatalogDB.browse_products`."""
    clauses, values = ["1"], []
    if category:
        category = category.strip("/")
        clauses.append("(p.category = ? or substr(p.category, 1, ?) = ?)")  # case-sensitive, as search's
        values += [category, len(category) + 1, category + "/"]
    if text:
        clauses.append("(p.sku like ? escape '\\' or p.name like ? escape '\\')")
        values += [f"%{_like_escape(text)}%"] * 2
    return " and ".join(clauses), values


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
