"""Object-focused global pooling: the feature map weighted by its own activations.

Average pooling gives every position of the feature map the same say, so a small product on a
shelf is outvoted by the shelf, the hand or the fridge around it (the eval report's worst queries
were matched on those, issue 28). Where the backbone's last feature map fires strongly the object
usually is, so these poolings weight positions by the map's own summed activation, with no
training and no new weights:

- ``crow`` (Kalantidis et al. 2016, "Cross-dimensional weighting"): each position weighted by its
  summed activation, L2-normalised over positions then square-rooted (the paper's a=2, b=2); each
  channel weighted by its sparsity, ``log(sum_h Q_h / (eps + Q_k))`` with ``Q_k`` the share of
  positions where channel k is non-zero (rare channels are more telling).
- ``scda`` (Wei et al. 2017, selective convolutional descriptor aggregation, without its
  largest-connected-component step): the mean of the descriptors at the positions whose summed
  activation is above the map's mean; the width stays the backbone's, as with ``avg``.

Both are plain tensor arithmetic (sums, comparisons, a log), so they export to ONNX with the rest
of the model. ``avg`` is the backbone's own pooling (:meth:`Embedder.pool`), the default.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from prodsearch.choices import POOLINGS
from prodsearch.errors import UnknownModelError

EPS = 1e-6  # keeps divisions finite for an all-zero map or channel (the paper's epsilon)


def crow_pool(features: torch.Tensor) -> torch.Tensor:
    """CroW pooling of ``(N, C, H, W)`` features into ``(N, C)``."""
    aggregated = features.sum(dim=1, keepdim=True).clamp(min=0)  # (N, 1, H, W); ReLU maps are >= 0 anyway
    norm = aggregated.square().sum(dim=(2, 3), keepdim=True).sqrt()
    spatial = (aggregated / (norm + EPS)).sqrt()
    pooled = (features * spatial).sum(dim=(2, 3))  # (N, C)
    nonzero = (features > 0).to(features.dtype).mean(dim=(2, 3))  # Q_k, (N, C)
    channels = features.shape[1]
    channel = torch.log((nonzero.sum(dim=1, keepdim=True) + channels * EPS) / (nonzero + EPS))
    return pooled * channel


def scda_pool(features: torch.Tensor) -> torch.Tensor:
    """SCDA-style pooling of ``(N, C, H, W)`` features into ``(N, C)``: the mean descriptor over the
    positions whose summed activation is above its mean over the map (all positions where none is,
    e.g. a constant map)."""
    aggregated = features.sum(dim=1, keepdim=True)
    mask = (aggregated > aggregated.mean(dim=(2, 3), keepdim=True)).to(features.dtype)
    mask = torch.where(mask.sum(dim=(2, 3), keepdim=True) > 0, mask, torch.ones_like(mask))
    return (features * mask).sum(dim=(2, 3)) / mask.sum(dim=(2, 3))


WEIGHTED_POOLINGS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"crow": crow_pool, "scda": scda_pool}


def check_pooling(name: str) -> str:
    """``name`` if it is a pooling prodsearch has, else an error that lists them."""
    if name not in POOLINGS:
        raise UnknownModelError(f"unknown pooling {name!r}; choose one of: {', '.join(POOLINGS)}")
    return name
