"""Whether training helped: the trained model against the untrained embedder it started from.

On a shop kept out of development (issue 28) the bare ``prodsearch train`` handed back a model that
found 22.4% of the shop's customer photos where the untrained embedder found 31.8%, and said
nothing. So after every run ``train`` scores both on the same photos (``--val``, else its held-out
photos: :mod:`.heldout`) with the training photos as the catalog, top-1 by exact cosine search,
stores the result in ``model.pt`` and says when the trained model is not better; ``index --model``
of such a model warns again (:func:`stored_comparison`). The untrained side is what the shop gets
without training: the run's ``--model`` with ImageNet weights at the size ``index`` gives it.

Only numpy at import: the command line and the indexer read comparisons without loading torch.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from prodsearch.retrieval.encoders import ModelSource

log = logging.getLogger(__name__)

SOURCES = ("val", "held-out")
# What to do with a model that is not better: where train says so, and where index --model does.
TRAIN_ADVICE = ("its model is written, but the shop is better served untrained: index without --model "
                "(prodsearch index CATALOG --index DIR), or train again with another --recipe or with "
                "--val customer photos of the trained SKUs")
INDEX_ADVICE = "the index is built as asked; leave out --model for the untrained embedder's answers"
_BLOCK = 1024  # queries scored at a time: bounds the similarity matrix's memory


@dataclass(frozen=True)
class Comparison:
    """Top-1 of the trained and the untrained model on the same ``photos`` queries (``source``:
    the ``--val`` photos or the held-out training photos, degraded as customer photos)."""

    trained: float
    untrained: float
    photos: int
    source: str  # one of SOURCES
    untrained_model: str  # the model name the run started from
    seconds: float = 0.0  # what comparing took: both models embedding the catalog and the queries

    @property
    def better(self) -> bool:
        """Whether training helped on these photos; a tie is not better (training cost something)."""
        return self.trained > self.untrained

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seconds": round(self.seconds, 3), "better": self.better}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Comparison:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    @property
    def photos_described(self) -> str:
        if self.source == "held-out":
            return f"{self.photos} held-out photos (degraded as customer photos)"
        return f"{self.photos} --val photos"

    def summary(self) -> str:
        """Both numbers, always: ``Compared on 120 held-out photos (...): trained 0.620, untrained NAME 0.550``."""
        return (f"Compared on {self.photos_described}: trained {self.trained:.3f}, "
                f"untrained {self.untrained_model} {self.untrained:.3f}")

    def not_better(self, model: str, advice: str) -> str | None:
        """The warning that ``model`` is not better than the untrained embedder, with both numbers and
        ``advice``; None when it is better."""
        if self.better:
            return None
        return (f"{model} is NOT better than the untrained {self.untrained_model}: top-1 {self.trained:.3f} "
                f"against {self.untrained:.3f} on {self.photos_described}; {advice}")


def comparison_dict(comparison: Comparison | None, reason: str | None) -> dict[str, Any]:
    """What ``OUT/comparison.json`` and ``train --json`` hold: the comparison, or why there is none
    (``better`` is then null)."""
    if comparison is None:
        return {"better": None, "reason": reason}
    return comparison.to_dict()


def top1(queries: np.ndarray, query_labels: np.ndarray, catalog: np.ndarray, catalog_labels: np.ndarray) -> float:
    """The share of ``queries`` whose nearest ``catalog`` vector (cosine, exact) has the query's
    label; the first of equally near ones counts. 0 for no queries or an empty catalog."""
    if not len(queries) or not len(catalog):
        return 0.0
    q, c = _unit(queries), _unit(catalog)
    query_labels, catalog_labels = np.asarray(query_labels), np.asarray(catalog_labels)
    hits = 0
    for start in range(0, len(q), _BLOCK):
        nearest = np.argmax(q[start:start + _BLOCK] @ c.T, axis=1)
        hits += int(np.sum(catalog_labels[nearest] == query_labels[start:start + _BLOCK]))
    return hits / len(q)


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def score(model: ModelSource, catalog: Sequence[str | os.PathLike], catalog_labels: np.ndarray,
          queries: Sequence[str | os.PathLike], query_labels: np.ndarray, *, device: str = "auto",
          num_workers: int | None = None) -> tuple[float, int]:
    """(top-1, queries scored) of ``model`` (torch, fp32) on ``queries`` against ``catalog``; files
    that cannot be read are left out on both sides."""
    from prodsearch.retrieval.embedding import embed_files
    from prodsearch.retrieval.encoders import create_encoder

    encoder = create_encoder(model, runtime="torch", device=device, precision="fp32")
    embedded = embed_files(encoder, [*catalog, *queries], num_workers=num_workers)
    cat, qry = embedded.split(len(catalog))
    return (top1(qry.vectors, np.asarray(query_labels)[qry.positions], cat.vectors,
                 np.asarray(catalog_labels)[cat.positions]), len(qry.positions))


def compare(trained: ModelSource, untrained: str, catalog: Sequence[str | os.PathLike], catalog_labels: np.ndarray,
            queries: Sequence[str | os.PathLike], query_labels: np.ndarray, source: str, *, device: str = "auto",
            num_workers: int | None = None) -> Comparison:
    """Score the ``trained`` model and the ``untrained`` one (a model name: ImageNet weights at the
    size ``index`` gives it) on the same photos."""
    if source not in SOURCES:
        raise ValueError(f"unknown comparison source {source!r}; one of {', '.join(SOURCES)}")
    start = time.perf_counter()
    trained_top1, photos = score(trained, catalog, catalog_labels, queries, query_labels, device=device,
                                 num_workers=num_workers)
    untrained_top1, _ = score(untrained, catalog, catalog_labels, queries, query_labels, device=device,
                              num_workers=num_workers)
    result = Comparison(trained_top1, untrained_top1, photos, source, untrained, time.perf_counter() - start)
    log.info("%s (%.1fs)", result.summary(), result.seconds)
    return result


def stored_comparison(model: object) -> Comparison | None:
    """The comparison a trained checkpoint file holds; None for anything else (a model name, an ONNX
    file, a model in memory) and for a checkpoint written before train compared."""
    from prodsearch.retrieval.encoders import is_onnx_path

    if not isinstance(model, (str, os.PathLike)) or is_onnx_path(model) or not os.path.isfile(model):
        return None
    from prodsearch.retrieval.checkpoint import load_checkpoint

    stored = load_checkpoint(model).get("comparison")
    return Comparison.from_dict(stored) if isinstance(stored, dict) else None
