"""What the HTTP API does, without HTTP: one opened index, one model, photos in, answers out.

:class:`SearchService` owns the :class:`~prodsearch.indexer.ProductIndex` (refreshed in the
background, so writes by the CLI or another server show up without a restart), the embedding
worker (:mod:`.batcher`), the decoding pool, and the server's writes, which go through the same
writer lock and crash-safe commit as ``prodsearch add`` and ``remove``.
"""

from __future__ import annotations

import errno
import logging
import mimetypes
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from prodsearch.catalog.listing import Item, Listing
from prodsearch.errors import ReadOnlyIndexError
from prodsearch.indexer import uploads
from prodsearch.indexer.catalog_db import CatalogDB
from prodsearch.indexer.lifecycle import NotInIndexError, add_to_index, remove_from_index
from prodsearch.indexer.product_index import ProductIndex
from prodsearch.indexer.rejection import STORED, Rejection
from prodsearch.indexer.results import Answer
from prodsearch.indexer.vectors import set_search_threads
from prodsearch.indexer.writer import check_writable
from prodsearch.retrieval.runtime import describe
from prodsearch.serve.batcher import DirectEmbedding, Embedding, MicroBatcher
from prodsearch.serve.metrics import Metrics
from prodsearch.serve.photos import PhotoDecoder, extension
from prodsearch.serve.thumbnails import ChangedFileError, ImageLoadError, indexed_bytes, thumbnail, thumbnail_size

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeSettings:
    """How ``prodsearch serve`` runs; the CLI's options, one for one."""

    index_dir: Path
    token: str | None = None  # writes need it as a bearer token; None: writes are refused
    max_upload_mb: float = 20.0  # per photo
    batching: bool | None = None  # micro-batching of concurrent requests' photos; None: where the model runs on a GPU
    max_batch: int = 8  # photos per model step
    model_threads: int | None = None  # ONNX Runtime's threads per step; None: 1 without batching, else all cores
    batch_wait_ms: float = 2.0  # how long the embedding worker waits for more photos
    refresh_seconds: float = 1.0  # how often the server looks for a newer generation
    search_threads: int = 1  # FAISS's OpenMP threads (see set_search_threads)
    decode_threads: int = 2
    model: str | None = None
    runtime: str = "auto"
    device: str = "auto"
    precision: str = "auto"
    write_wait: float = 30.0  # seconds a write waits for another writer (a CLI add) before 503

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


@dataclass(frozen=True)
class Searched:
    answer: Answer
    timings_ms: dict[str, float] = field(default_factory=dict)  # decode, embed, search


@dataclass(frozen=True)
class Written:
    """What a write changed: ``generation`` is the one answers now come from."""

    generation: int
    added: list[int] = field(default_factory=list)  # image ids
    unchanged: int = 0  # photos the product already had
    removed: list[int] = field(default_factory=list)  # image ids
    removed_skus: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # photos left out, with why


@dataclass(frozen=True)
class PhotoFile:
    """A catalog photo to send (the original, or a thumbnail); ``etag`` comes from its content's MD5."""

    media_type: str
    etag: str
    data: bytes


class SearchService:
    def __init__(self, settings: ServeSettings, metrics: Metrics | None = None):
        self.settings, self.metrics = settings, metrics or Metrics()
        self.index_dir = Path(settings.index_dir)
        self.index = ProductIndex.open(self.index_dir, model=settings.model, runtime=settings.runtime,
                                       device=settings.device, precision=settings.precision)
        set_search_threads(settings.search_threads)
        encoder = self.index.encoder
        # On 2 CPU cores, one single-threaded model step per request beat micro-batching by 5-15% at
        # 8 clients, at the same latency for one (BENCHMARKS.md); a GPU wants batches.
        self.batching = encoder.device != "cpu" if settings.batching is None else settings.batching
        threads = settings.model_threads or (None if self.batching else 1)
        if threads and hasattr(encoder, "with_threads"):
            encoder = self.index.encoder = encoder.with_threads(threads)
        # Photos are embedded as the index's catalog was: its views each, fused after the model.
        self.views = self.index.manifest.views
        self.decoder = PhotoDecoder(encoder.config.data_config, settings.decode_threads, settings.max_upload_bytes,
                                    self.views)
        self.embedding: Embedding = (
            MicroBatcher(encoder, max_batch=settings.max_batch, wait_ms=settings.batch_wait_ms,
                         observe=self.metrics.batch.observe, views=self.views)
            if self.batching else DirectEmbedding(encoder, self.metrics.batch.observe, self.views))
        self.ready = False
        self._write_lock = threading.Lock()  # this server's writes, one at a time (the writer lock spans processes)
        self._stop = threading.Event()
        self._refresher = threading.Thread(target=self._refresh_loop, name="prodsearch-refresh", daemon=True)
        self._observe_generation()
        log.info("serving %s: %d images, generation %d, embedding with %s (%s, %d views a photo), micro-batching %s",
                 self.index_dir, len(self.index), self.index.generation, encoder.config.label, describe(encoder),
                 self.views, "on" if self.batching else "off")

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Warm the model at the steps searches take (the first steps of a session are slow) and start
        looking for new generations."""
        shape = tuple(self.index.encoder.config.data_config["input_size"])
        for n in {1, self.settings.max_batch}:
            self.index.encoder.encode(np.zeros((n * self.views, *shape), np.float32))
        self._refresher.start()
        self.ready = True

    def close(self) -> None:
        self.ready = False
        self._stop.set()
        if self._refresher.is_alive():
            self._refresher.join()
        self.embedding.close()
        self.decoder.close()
        self.index.close()

    def refresh(self) -> bool:
        changed = self.index.refresh()
        if changed:
            self._observe_generation()
        return changed

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.settings.refresh_seconds):
            try:
                self.refresh()
            except Exception:  # a damaged or half-written index must not stop the loop: answers stay on the last view
                log.exception("refreshing %s failed; answering from generation %d", self.index_dir,
                              self.index.generation)

    def _observe_generation(self) -> None:
        self.metrics.generation.set(self.index.generation)
        self.metrics.images.set(len(self.index))

    # ------------------------------------------------------------------ search

    def search(self, photos: list[bytes], top_k: int = 5, category: str | None = None,
               rejection: Rejection = STORED) -> Searched:
        """Rank SKUs for photos of one product (several are fused as ``query --as-one`` does), the
        first accepted or rejected by the "not in catalog" rule (the index's, by default)."""
        with self.embedding.expecting():
            t0 = time.perf_counter()
            inputs = self.decoder.inputs(photos)
            t1 = time.perf_counter()
            vectors = self.embedding.embed(inputs)
            t2 = time.perf_counter()
        answer = self.index.identify(vectors, top_k, category, rejection)
        t3 = time.perf_counter()
        return Searched(answer, {"decode": 1000 * (t1 - t0), "embed": 1000 * (t2 - t1), "search": 1000 * (t3 - t2)})

    # ------------------------------------------------------------------ catalog

    @contextmanager
    def _reading(self) -> Iterator[CatalogDB]:
        """This thread's catalog connection, reading one generation throughout."""
        db = self.index.catalog
        with db.guarded(), db.snapshot():
            yield db

    def summary(self) -> dict:
        encoder, manifest = self.index.encoder, self.index.manifest
        with self._reading() as db:
            counts, generation = db.counts(), db.state().generation
        return {"products": counts["products"], "images": counts["images"], "generation": generation,
                "serving_generation": self.index.generation, "model": manifest.model.name,
                "runtime": encoder.runtime, "precision": encoder.precision, "device": encoder.device,
                "index_type": manifest.index_type, "dim": manifest.model.embed_dim, "views": manifest.views}

    def products(self, *, limit: int, offset: int, category: str | None, text: str | None) -> dict:
        with self._reading() as db:
            total, rows = db.browse_products(limit=limit, offset=offset, category=category, text=text)
            generation = db.state().generation
        return {"total": total, "limit": limit, "offset": offset, "generation": generation, "products": rows}

    def product(self, sku: str) -> dict:
        with self._reading() as db:
            found = db.products([sku]).get(sku)
            images = db.product_images(sku) if found else []
        if found is None or not images:
            raise NotInIndexError(f"no product {sku!r} in the index")
        return {"sku": found.sku, "name": found.name, "category": found.category, "images": images}

    def category_counts(self) -> dict[str | None, int]:
        with self._reading() as db:
            return db.category_counts()

    def photo(self, image_id: int, size: int | None = None) -> PhotoFile:
        """A catalog photo by image id, or its thumbnail (longest side ``size``, rounded up to a step);
        only while its file is the one indexed (:func:`~.thumbnails.indexed_bytes`)."""
        with self._reading() as db:
            row = db.image(image_id)
        if row is None:
            raise NotInIndexError(f"no image {image_id} in the index")
        try:
            if size is None:
                media_type = mimetypes.guess_type(row["path"])[0] or "application/octet-stream"
                return PhotoFile(media_type, row["md5"], indexed_bytes(row["path"], row["md5"], row["size"]))
            size = thumbnail_size(size)
            data = thumbnail(self.index_dir, row["path"], row["md5"], row["size"], size)
        except ChangedFileError as exc:
            raise NotInIndexError(f"the photo file of image {image_id} {exc} since it was indexed; run prodsearch "
                                  "update CATALOG --index DIR to bring the index in line with the catalog") from None
        except ImageLoadError as exc:
            raise NotInIndexError(f"the photo file of image {image_id} cannot be read ({exc}); run prodsearch "
                                  "update CATALOG --index DIR to bring the index in line with the catalog") from None
        return PhotoFile("image/jpeg", f"{row['md5']}-{size}", data)

    # ------------------------------------------------------------------ writes

    def add_photos(self, sku: str, photos: list[bytes], name: str | None = None,
                   category: str | None = None) -> Written:
        """Add photos to a product (a new one takes ``name`` and ``category``; a known one keeps its
        own). All photos are checked before anything is stored; each is kept in ``uploads/``."""
        check_writable(self.index_dir)  # a read-only index is a 409, as for a delete, before anything is stored
        self.decoder.inputs(photos)  # every photo is small enough and decodes, or nothing is stored
        extensions = [extension(data) for data in photos]
        items: list[Item] = []

        def stored() -> Listing:  # under the writer lock; a refused add leaves nothing (IndexWriter clears it)
            try:
                paths = [uploads.store(self.index_dir, data, ext) for data, ext in zip(photos, extensions)]
            except OSError as exc:  # the folder is writable but uploads/ is not (another user's, another mount)
                if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                    raise
                raise ReadOnlyIndexError(self.index_dir, f"cannot write {uploads.UPLOADS}/: {exc.strerror}") from None
            items.extend(Item(path, sku, name, category, origin=f"photo {i}") for i, path in enumerate(paths, 1))
            return Listing(self.index_dir / uploads.UPLOADS, "upload", items)

        with self._write_lock:
            report = add_to_index(stored, self.index_dir, model=self.index.encoder, num_workers=0,
                                  wait=self.settings.write_wait)
            self.refresh()
            origins = {str(item.path): item.origin for item in items}  # "photo 2", not a path on the server
            return Written(self.index.generation, added=report.added_ids, unchanged=report.unchanged,
                           skipped=[f"{origins.get(s.path, s.path)}: {s.reason}" for s in report.skipped])

    def delete_product(self, sku: str) -> Written:
        with self._write_lock:
            with self._reading() as db:
                ids = [r["image_id"] for r in db.product_images(sku)]
            return self._remove(skus=[sku], image_ids=ids)

    def delete_image(self, image_id: int) -> Written:
        with self._write_lock:
            return self._remove(image_ids=[image_id])

    def _remove(self, *, skus: list[str] = (), image_ids: list[int] = ()) -> Written:
        """The uploaded files no image has any more go with the write (IndexWriter clears them)."""
        report = remove_from_index(self.index_dir, skus=skus, image_ids=image_ids if not skus else (),
                                   wait=self.settings.write_wait)
        self.refresh()
        return Written(self.index.generation, removed=list(image_ids), removed_skus=report.removed_skus)


def category_tree(counts: dict[str | None, int]) -> tuple[list[dict], int]:
    """Categories as a tree (``name``, ``path``, ``products`` in the whole subtree, ``children``) and
    the number of products without a category."""
    root: dict = {"children": {}}
    for category, n in counts.items():
        if not category:
            continue
        node, path = root, []
        for part in category.split("/"):
            path.append(part)
            node = node["children"].setdefault(part, {"name": part, "path": "/".join(path), "products": 0,
                                                      "children": {}})
            node["products"] += n

    def listed(node: dict) -> list[dict]:
        return [{**child, "children": listed(child)} for _, child in sorted(node["children"].items())]

    return listed(root), counts.get(None, 0) + counts.get("", 0)


