"""The catalog database (SQLite through sqlite-utils): products and their images.

Vector ids in the FAISS index are ``images.id``; this is where an id becomes a SKU, a name and a
file path.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import sqlite_utils


_CHUNK = 500  # values per "in (...)" list


@dataclass(frozen=True)
class Product:
    sku: str
    name: str
    category: str | None


def create_catalog_db(path: str | os.PathLike, products: Iterable[dict], images: Iterable[dict]) -> None:
    """Write a new catalog database: products(sku, name, category), images(id, sku, path, md5, width, height)."""
    db = sqlite_utils.Database(path)
    db["products"].create({"sku": str, "name": str, "category": str}, pk="sku")
    db["images"].create(
        {"id": int, "sku": str, "path": str, "md5": str, "width": int, "height": int},
        pk="id", foreign_keys=[("sku", "products", "sku")],
    )
    db["images"].create_index(["sku", "md5"], unique=True)
    db["products"].insert_all(products)
    db["images"].insert_all(images)
    db.conn.commit()
    db.close()


class CatalogDB:
    """Read-only view of a catalog database, with the id -> SKU map held in memory for ranking."""

    def __init__(self, path: str | os.PathLike):
        conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
        self.db = sqlite_utils.Database(conn)
        rows = self.db.execute("select id, sku from images order by id").fetchall()
        self.image_ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        self.skus = sorted({r[1] for r in rows})
        code = {sku: i for i, sku in enumerate(self.skus)}
        self.image_sku_codes = np.fromiter((code[r[1]] for r in rows), dtype=np.int64, count=len(rows))

    def sku_codes(self, ids: np.ndarray) -> np.ndarray:
        """SKU code (index into ``self.skus``) of each image id; -1 where the id is unknown."""
        if len(self.image_ids) == 0:
            return np.full(np.shape(ids), -1, dtype=np.int64)
        pos = np.searchsorted(self.image_ids, ids).clip(0, len(self.image_ids) - 1)
        return np.where(self.image_ids[pos] == ids, self.image_sku_codes[pos], -1)

    def products(self, skus: Iterable[str]) -> dict[str, Product]:
        rows = self._select_in("select sku, name, category from products where sku in ({})", set(skus))
        return {r[0]: Product(*r) for r in rows}

    def image_paths(self, ids: Iterable[int]) -> dict[int, str]:
        return dict(self._select_in("select id, path from images where id in ({})", {int(i) for i in ids}))

    def _select_in(self, sql: str, values: set) -> list[tuple]:
        """Run ``sql`` with its ``in ({})`` list filled in chunks (SQLite caps bound parameters)."""
        values, rows = sorted(values), []
        for start in range(0, len(values), _CHUNK):
            chunk = values[start:start + _CHUNK]
            rows += self.db.execute(sql.format(",".join("?" * len(chunk))), chunk).fetchall()
        return rows

    def counts(self) -> tuple[int, int]:
        """(products, images)."""
        return self.db["products"].count, self.db["images"].count

    def close(self) -> None:
        self.db.close()
