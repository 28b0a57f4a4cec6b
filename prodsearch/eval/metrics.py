"""Retrieval metrics over ranked SKU lists, and recall of approximate vector search."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def hits_at_k(ranked: Sequence[Sequence[str]], truth: Sequence[str], k: int) -> list[bool]:
    """Whether each query's true SKU is among its first ``k`` ranked SKUs."""
    if len(ranked) != len(truth):
        raise ValueError(f"{len(ranked)} rankings for {len(truth)} ground-truth labels")
    return [t in list(r)[:k] for r, t in zip(ranked, truth)]


def top_k_accuracy(ranked: Sequence[Sequence[str]], truth: Sequence[str], k: int) -> float:
    """Share of queries whose true SKU is in the top ``k``; 0.0 for no queries."""
    hits = hits_at_k(ranked, truth, k)
    return sum(hits) / len(hits) if hits else 0.0


def recall_against_exact(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Recall@k of approximate neighbours ``found`` against exact ``truth`` (rows of ids, best
    first): recall@1 is the share of queries whose first id is the exact first; for k > 1 the
    share of the exact top k found in the approximate top k."""
    if k == 1:
        return float(np.mean(found[:, 0] == truth[:, 0]))
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))
