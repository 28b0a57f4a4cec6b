"""Micro-batching: photos of concurrent requests embedded together by one inference worker.

A model step on 8 photos costs far less than 8 steps on one (ONNX Runtime on 2 cores: lite0 at 262
photos/s in batches of 8), and concurrent sessions on the same cores only slow each other down. So
requests queue their photos; one worker thread takes what is waiting, keeps collecting for at most
``wait_ms`` until ``max_batch`` photos, runs one model step and hands each request its rows.
:class:`DirectEmbedding` is the same interface without batching (each request runs its own step),
which ``benchmarks/serve_load.py`` measures against it.

On an index with ``views`` > 1 every photo arrives as that many model inputs (its views,
consecutive): both count photos, not inputs, and hand each request one fused vector per photo.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Callable, ContextManager, Iterator, Protocol

import numpy as np

from prodsearch.retrieval.runtime import Encoder
from prodsearch.retrieval.views import check_views, fuse_views

log = logging.getLogger(__name__)

BatchObserver = Callable[[int], None]  # called with the photos of each model step


class Embedding(Protocol):
    def expecting(self) -> ContextManager[None]:
        """Around a request's decoding and embedding (see :meth:`MicroBatcher.expecting`)."""

    def embed(self, inputs: np.ndarray) -> np.ndarray:
        """Embed the model inputs of n photos, ``(n * views, 3, H, W)``, into ``(n, dim)``; blocks
        until done."""

    def close(self) -> None: ...


class DirectEmbedding:
    """Every request runs its own model step (micro-batching off)."""

    def __init__(self, encoder: Encoder, observe: BatchObserver | None = None, views: int = 1):
        check_views(views)
        self.encoder, self._observe, self.views = encoder, observe, views

    @contextmanager
    def expecting(self) -> Iterator[None]:
        yield

    def embed(self, inputs: np.ndarray) -> np.ndarray:
        if self._observe:
            self._observe(len(inputs) // self.views)
        return fuse_views(self.encoder.encode(inputs), self.views)

    def close(self) -> None:
        pass


class MicroBatcher:
    """One worker thread embeds the photos of all waiting requests in steps of up to ``max_batch``
    photos (``max_batch * views`` model inputs)."""

    def __init__(self, encoder: Encoder, *, max_batch: int, wait_ms: float, observe: BatchObserver | None = None,
                 views: int = 1):
        check_views(views)
        self.encoder, self.max_batch, self.wait = encoder, max(1, max_batch), max(0.0, wait_ms) / 1000
        self._observe, self.views = observe, views
        self._queue: queue.Queue[tuple[np.ndarray, Future] | None] = queue.Queue()
        self._carry: tuple[np.ndarray, Future] | None = None  # taken from the queue, left for the next step
        self._lock = threading.Lock()
        self._announced = 0  # requests inside expecting() that have not queued their photos yet
        self._local = threading.local()
        self._worker = threading.Thread(target=self._run, name="prodsearch-embed", daemon=True)
        self._worker.start()

    @contextmanager
    def expecting(self) -> Iterator[None]:
        """Announce a request that will call :meth:`embed` soon (it is decoding its photos): the
        worker waits for announced requests only, so a lone request is never held back."""
        self._coming(+1)
        self._local.announced = True
        try:
            yield
        finally:
            if self._local.announced:  # it never queued (a photo it could not decode)
                self._local.announced = False
                self._coming(-1)

    def _coming(self, change: int) -> None:
        with self._lock:
            self._announced += change

    def embed(self, inputs: np.ndarray) -> np.ndarray:
        if not self._worker.is_alive():
            raise RuntimeError("the embedding worker has stopped")
        future: Future = Future()
        self._queue.put((inputs, future))
        if getattr(self._local, "announced", False):
            self._local.announced = False
            self._coming(-1)
        return future.result()

    def close(self) -> None:
        """Finish what is queued, then stop the worker."""
        self._queue.put(None)
        self._worker.join()

    def _run(self) -> None:
        while True:
            first, self._carry = (self._carry or self._queue.get()), None
            if first is None:
                return
            batch, stop = self._collect(first)
            self._step(batch)
            if stop:
                return

    def _collect(self, first: tuple[np.ndarray, Future]) -> tuple[list[tuple[np.ndarray, Future]], bool]:
        """``first`` and what arrives within ``wait`` seconds, up to ``max_batch`` photos (a request is
        never split: one larger than the rest of the room waits for the next step)."""
        batch, photos, deadline = [first], self._photos(first[0]), time.perf_counter() + self.wait
        while photos < self.max_batch:
            try:  # wait only while announced requests may still come; take what is queued anyway
                wait = deadline - time.perf_counter() if self._announced > 0 else 0.0
                item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, True
            if photos + self._photos(item[0]) > self.max_batch:
                self._carry = item  # first in the next step
                break
            batch.append(item)
            photos += self._photos(item[0])
        return batch, False

    def _photos(self, inputs: np.ndarray) -> int:
        return len(inputs) // self.views

    def _step(self, batch: list[tuple[np.ndarray, Future]]) -> None:
        live = [(x, f) for x, f in batch if f.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            if self._observe:
                self._observe(sum(self._photos(x) for x, _ in live))
            # Each request holds whole photos, so the step's groups of views never straddle two.
            vectors = fuse_views(self.encoder.encode(np.concatenate([x for x, _ in live])), self.views)
        except BaseException as exc:  # every waiting request hears of it; the worker carries on
            log.exception("embedding a batch of %d requests failed", len(live))
            for _, f in live:
                f.set_exception(exc)
            return
        start = 0
        for x, f in live:
            f.set_result(vectors[start:start + self._photos(x)])
            start += self._photos(x)
