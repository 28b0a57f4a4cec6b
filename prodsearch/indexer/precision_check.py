"""Whether int8 keeps a shop's answers: measured on its own photos before an index takes it.

int8 is 2x faster on CPUs with VNNI or AMX, but on a shop with many look-alike SKUs its small
errors move nearest neighbours: on a real shop kept out of development it cost 2-3 points of top-1
(issue 28). So ``--precision auto`` takes int8 only where, on a sample of the shop's photos, it
changes at most :data:`MAX_INT8_CHANGED` of the top-1 answers fp32 gives. The answers are compared,
not graded: no labels are needed, and a wrong answer that int8 keeps wrong is no loss from int8.

The queries are the sample's own photos, each with its own image left out, or photos given by the
caller (``prodsearch tune``'s labelled customer photos), searched against the sample.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from prodsearch.retrieval.embedding import FileEmbeddings
    from prodsearch.retrieval.runtime import Encoder

log = logging.getLogger(__name__)

MAX_INT8_CHANGED = 0.005  # the share of top-1 answers int8 may change and still be taken by auto
SAMPLE_PHOTOS = 500  # catalog photos the check embeds in both precisions: 2 changes allowed at 500
CATALOG_SOURCE = "catalog photos"  # what the queries were, for people: each with its own image left out


@dataclass(frozen=True)
class Agreement:
    """How many query photos got the same top-1 SKU from int8 as from fp32 (and how many of each
    were the query's own SKU: a wrong answer int8 keeps is counted as agreeing)."""

    photos: int
    changed: int
    fp32_right: int = 0
    int8_right: int = 0

    @property
    def agreement(self) -> float:
        return 1.0 - self.changed_share if self.photos else 0.0

    @property
    def changed_share(self) -> float:
        return self.changed / self.photos if self.photos else 1.0


def top1_skus(queries: np.ndarray, catalog: np.ndarray, skus: Sequence[str] | np.ndarray,
              leave_one_out: bool = False) -> np.ndarray:
    """The top-1 SKU of each query row, a SKU scoring its best photo (so: the SKU of the nearest
    photo); ``leave_one_out``: query i is catalog photo i, which is not its own answer."""
    scores = queries @ catalog.T
    if leave_one_out:
        np.fill_diagonal(scores, -np.inf)
    return np.asarray(skus)[np.argmax(scores, axis=1)]


def answer_agreement(fp32_vectors: np.ndarray, int8_vectors: np.ndarray, skus: Sequence[str] | np.ndarray,
                     queries: tuple[np.ndarray, np.ndarray] | None = None,
                     query_skus: Sequence[str] | np.ndarray | None = None) -> Agreement:
    """int8's top-1 answers against fp32's: the catalog sample (row i of both vector arrays is
    photo i, of SKU ``skus[i]``) searched by each of its own photos left out of it, or by
    ``queries`` (their fp32 and int8 vectors) whose SKUs ``query_skus`` are, where known."""
    skus = np.asarray(skus)
    leave_one_out = queries is None
    if queries is None:
        if len(skus) < 2:  # a photo left out of a sample of one has nothing to be answered with
            return Agreement(0, 0)
        queries, query_skus = (fp32_vectors, int8_vectors), skus
    fp32 = top1_skus(queries[0], fp32_vectors, skus, leave_one_out)
    int8 = top1_skus(queries[1], int8_vectors, skus, leave_one_out)
    truth = None if query_skus is None else np.asarray(query_skus)
    right = (0, 0) if truth is None else (int(np.sum(fp32 == truth)), int(np.sum(int8 == truth)))
    return Agreement(len(fp32), int(np.sum(fp32 != int8)), *right)


@dataclass(frozen=True)
class PrecisionCheck:
    """What the index's manifest records of the check: the measurement, the limit it was held to,
    what was asked (``auto`` or ``int8``) and what the index embeds with."""

    photos: int
    changed: int
    limit: float
    chosen: str  # "int8" or "fp32"
    asked: str = "auto"
    source: str = CATALOG_SOURCE
    fp32_right: int = 0
    int8_right: int = 0

    @property
    def agreement(self) -> float:
        return Agreement(self.photos, self.changed).agreement

    @property
    def within_limit(self) -> bool:
        return self.photos > 0 and self.changed <= self.limit * self.photos

    def to_dict(self) -> dict[str, Any]:
        return {"photos": self.photos, "changed": self.changed, "agreement": round(self.agreement, 6),
                "limit": self.limit, "chosen": self.chosen, "asked": self.asked, "source": self.source,
                "fp32_right": self.fp32_right, "int8_right": self.int8_right}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PrecisionCheck:
        return cls(d["photos"], d["changed"], d["limit"], d["chosen"], d.get("asked", "auto"),
                   d.get("source", CATALOG_SOURCE), d.get("fp32_right", 0), d.get("int8_right", 0))

    def describe(self) -> str:
        """One line for ``info`` and the index log."""
        if not self.photos:
            return f"not measured (fewer than 2 readable {self.source}): {self.chosen}"
        share = f"{self.changed / self.photos:.1%}"
        measured = f"on {self.photos} {self.source} (limit {self.limit:.1%})"
        if self.chosen == "fp32":
            return f"refused, it changed {share} of top-1 answers {measured}: fp32"
        if self.within_limit:
            return f"kept, {share} of top-1 answers changed {measured}"
        return f"asked for (--precision int8), although it changed {share} of top-1 answers {measured}"


def decide(agreement: Agreement, asked: str = "auto", limit: float = MAX_INT8_CHANGED,
           source: str = CATALOG_SOURCE) -> PrecisionCheck:
    """int8 where it was asked for by name or changed at most ``limit`` of the answers, else fp32."""
    kept = asked == "int8" or (agreement.photos > 0 and agreement.changed <= limit * agreement.photos)
    return PrecisionCheck(agreement.photos, agreement.changed, limit, "int8" if kept else "fp32", asked, source,
                          agreement.fp32_right, agreement.int8_right)


def sample_spread(n: int, size: int = SAMPLE_PHOTOS) -> list[int]:
    """``size`` positions spread evenly over ``n`` (all of them where there are no more)."""
    return list(range(n)) if n <= size else np.linspace(0, n - 1, size).round().astype(int).tolist()


@dataclass
class Measured:
    """A check and the sample's vectors in the precision it chose (the build reuses them)."""

    check: PrecisionCheck
    paths: list[str]
    vectors: FileEmbeddings


def measure_int8(fp32: Encoder, int8: Encoder, paths: Sequence[str | os.PathLike], skus: Sequence[str], *,
                 queries: Sequence[str | os.PathLike] | None = None, query_skus: Sequence[str] | None = None,
                 asked: str = "auto", limit: float = MAX_INT8_CHANGED, source: str | None = None, views: int = 1,
                 num_workers: int | None = None) -> Measured:
    """Embed the catalog sample ``paths`` (of ``skus``) with both encoders and decide
    (:func:`decide`): queried by its own photos left out, or by the photos ``queries`` (of
    ``query_skus`` where known). Unreadable photos are left out of the measurement."""
    from prodsearch.retrieval.embedding import embed_files

    files = [os.fspath(p) for p in paths]
    a, b = (embed_files(e, files, views=views, num_workers=num_workers) for e in (fp32, int8))
    va, vb, read = _in_both(a, b)
    if queries is None:
        agreement = answer_agreement(va, vb, np.asarray(skus)[read])
    else:
        qa, qb = (embed_files(e, list(queries), views=views, num_workers=num_workers) for e in (fp32, int8))
        *pair, asked_read = _in_both(qa, qb)
        labels = None if query_skus is None else np.asarray(query_skus)[asked_read]
        agreement = answer_agreement(va, vb, np.asarray(skus)[read], (pair[0], pair[1]), labels)
    check = decide(agreement, asked, limit, source or (CATALOG_SOURCE if queries is None else "query photos"))
    log.info("int8: %s", check.describe())
    if check.chosen == "int8" and not check.within_limit:
        log.warning("int8 was asked for and changes %d of %d top-1 answers of fp32 on this shop's photos; "
                    "--precision auto would embed in fp32", check.changed, check.photos)
    return Measured(check, files, b if check.chosen == "int8" else a)


def _in_both(a: FileEmbeddings, b: FileEmbeddings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The vectors of the files both embeddings read, and those files' positions."""
    both = np.intersect1d(a.positions, b.positions)
    return a.vectors[np.searchsorted(a.positions, both)], b.vectors[np.searchsorted(b.positions, both)], both


def reusing(measured: Measured | None, embed_with: Callable[..., FileEmbeddings]) -> Callable[..., FileEmbeddings]:
    """``embed_with`` that takes the vectors the check computed for its photos instead of embedding
    them again (the catalog's photos are embedded for the index anyway)."""
    if measured is None:
        return embed_with
    done = measured.vectors
    known = {measured.paths[p]: k for k, p in enumerate(done.positions.tolist())}
    per_photo = done.seconds / max(1, len(known))

    def embed(encoder: Encoder, paths: Sequence[str | os.PathLike], *, progress=None, **options) -> FileEmbeddings:
        from prodsearch.retrieval.embedding import FileEmbeddings

        rows = [known.get(os.fspath(p)) for p in paths]
        todo = [i for i, row in enumerate(rows) if row is None]
        reused = len(paths) - len(todo)
        if not reused:
            return embed_with(encoder, paths, progress=progress, **options)
        counted = None if progress is None else (lambda n, _: progress(reused + n, len(paths)))
        fresh = (embed_with(encoder, [paths[i] for i in todo], progress=counted, **options) if todo else
                 FileEmbeddings(done.vectors[:0], np.zeros(0, np.int64), np.zeros((0, 2), np.int64)))
        if progress is not None and not todo:
            progress(len(paths), len(paths))
        pos = np.concatenate([[i for i, row in enumerate(rows) if row is not None],
                              np.asarray(todo, dtype=np.int64)[fresh.positions]]).astype(np.int64)
        old = [row for row in rows if row is not None]
        order = np.argsort(pos, kind="stable")
        vectors = np.concatenate([done.vectors[old], fresh.vectors])[order]
        sizes = np.concatenate([done.sizes[old], fresh.sizes.reshape(-1, 2)])[order]
        failures = {todo[i]: why for i, why in fresh.failures.items()}
        return FileEmbeddings(vectors, pos[order], sizes, failures, fresh.seconds + per_photo * reused)

    return embed
