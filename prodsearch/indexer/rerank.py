"""Re-ranking on the vectors themselves, and how a SKU scores from its photos' scores.

Alpha query expansion (alpha-QE) and database-side augmentation (DBA) are the two classic
retrieval re-rankers (Radenović, Tolias and Chum, "Fine-tuning CNN image retrieval with no human
annotation", 2018): a vector is replaced by the mean of itself and its nearest catalog vectors,
each weighted by its similarity to the power ``alpha``. Both are numpy in, numpy out, on
L2-normalised rows, so they apply to any backend's vectors.
"""

from __future__ import annotations

import numpy as np

from prodsearch.retrieval.views import normalized

SKU_SCORING = ("max", "mean-top")


def neighbour_mean(vectors: np.ndarray, database: np.ndarray, k: int, alpha: float,
                   exclude_self: bool = False) -> np.ndarray:
    """Each row of ``vectors`` plus its ``k`` most similar ``database`` rows weighted by
    ``max(similarity, 0) ** alpha``, re-normalised. ``exclude_self``: ``vectors`` is ``database``
    and a row is not its own neighbour (it keeps weight 1 as the query does)."""
    if k <= 0 or len(database) == 0:
        return normalized(vectors.astype(np.float32))
    scores = vectors @ database.T
    if exclude_self:
        np.fill_diagonal(scores, -np.inf)
    k = min(k, database.shape[0] - int(exclude_self))
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k > 0 else np.zeros((len(vectors), 0), int)
    weights = np.clip(np.take_along_axis(scores, top, axis=1), 0, None) ** alpha
    return normalized(vectors + np.einsum("nk,nkd->nd", weights, database[top]))


def alpha_qe(queries: np.ndarray, database: np.ndarray, k: int = 2, alpha: float = 3.0) -> np.ndarray:
    """Queries expanded with their top-``k`` catalog neighbours: a customer photo borrows the clean
    catalog view of what it most likely shows."""
    return neighbour_mean(queries, database, k, alpha)


def dba(database: np.ndarray, k: int = 2, alpha: float = 3.0) -> np.ndarray:
    """Database-side augmentation: each catalog vector mixed with its top-``k`` catalog neighbours,
    smoothing out one unusual photo of a SKU."""
    return neighbour_mean(database, database, k, alpha, exclude_self=True)


def sku_scores(scores: np.ndarray, image_skus: np.ndarray, how: str = "max", top: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """``(skus, per-SKU scores)`` from per-photo ``scores`` ``(n_queries, n_photos)``: a SKU scores
    its best photo (``max``), or the mean of its best ``top`` photos (``mean-top``, fewer where it
    has fewer): one lucky photo then counts less than several good ones."""
    if how not in SKU_SCORING:
        raise ValueError(f"how must be one of {SKU_SCORING}")
    skus, column = np.unique(image_skus, return_inverse=True)
    out = np.empty((scores.shape[0], len(skus)), np.float32)
    for j in range(len(skus)):
        mine = scores[:, column == j]
        if how == "max":
            out[:, j] = mine.max(axis=1)
        else:
            t = min(top, mine.shape[1])
            out[:, j] = -np.partition(-mine, t - 1, axis=1)[:, :t].mean(axis=1)
    return skus, out
