"""Retrieval metrics over ranked SKU lists."""

from __future__ import annotations

from typing import Sequence


def hits_at_k(ranked: Sequence[Sequence[str]], truth: Sequence[str], k: int) -> list[bool]:
    """Whether each query's true SKU is among its first ``k`` ranked SKUs."""
    if len(ranked) != len(truth):
        raise ValueError(f"{len(ranked)} rankings for {len(truth)} ground-truth labels")
    return [t in list(r)[:k] for r, t in zip(ranked, truth)]


def top_k_accuracy(ranked: Sequence[Sequence[str]], truth: Sequence[str], k: int) -> float:
    """Share of queries whose true SKU is in the top ``k``; 0.0 for no queries."""
    hits = hits_at_k(ranked, truth, k)
    return sum(hits) / len(hits) if hits else 0.0
