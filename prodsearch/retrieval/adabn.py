"""AdaBN (Li et al. 2016): BatchNorm statistics re-estimated on a shop's own unlabelled photos.

An ImageNet backbone normalises every layer with ImageNet's means and variances; a shop whose
queries are small, blurry video crops feeds it other statistics, and each layer's output drifts
from what the next expects. Re-estimating the running statistics on the shop's customer photos
(no labels, no gradient step) moves them back; every weight stays as it was.

The adapted embedder's weights differ, so its identity is a checkpoint's:
``config.weights == "checkpoint:<digest>"``, the digest :func:`~prodsearch.retrieval.checkpoint.weights_digest`
gives. An index records it as any trained model: pass the embedder to ``build_index(model=...)``
/ ``create_encoder``, or save it with :func:`~prodsearch.retrieval.checkpoint.save_checkpoint` and
``prodsearch index CATALOG --model adapted.pt`` (loading it gives the same digest).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from prodsearch.errors import ProdsearchError
from prodsearch.retrieval.checkpoint import weights_digest
from prodsearch.retrieval.device import resolve_device
from prodsearch.retrieval.embedder import Embedder
from prodsearch.retrieval.embedding import preprocessed

log = logging.getLogger(__name__)

SHUFFLE_SEED = 0  # the order photos are batched in: fixed, so the same photos give the same model


class AdaptationError(ProdsearchError):
    """Nothing to adapt on: no readable photo, or a model without BatchNorm layers to adapt."""


def adapt_batchnorm(embedder: Embedder, photos: Sequence[str | os.PathLike], batch_size: int = 32, *,
                    device: str = "cpu", num_workers: int = 1) -> Embedder:
    """A copy of ``embedder`` whose backbone BatchNorm running statistics are the cumulative
    average over ``photos`` in seeded random batches of ``batch_size`` (each batch counts alike, a
    short last one too), preprocessed as an index embeds them; in eval mode, every other weight as it was, and
    ``embedder`` itself untouched. Unreadable photos are left out; none readable is an error."""
    if not isinstance(embedder, Embedder):
        raise AdaptationError(f"AdaBN adapts one backbone, not a {type(embedder).__name__}: adapt each member "
                              "of an ensemble on its own")
    adapted = copy.deepcopy(embedder).eval()
    layers = [m for m in adapted.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers:
        raise AdaptationError(f"{embedder.config.label} has no BatchNorm layer to adapt")
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average: every batch counts alike, whatever their order
        layer.train()  # only the BatchNorm layers: dropout and drop-path stay off
    target = resolve_device(device)
    adapted.to(target)
    # Shuffled (seeded): a batch's variance leaves out how batches differ, and photos listed SKU by
    # SKU would give batches of one product each, variances too small.
    paths = [photos[i] for i in np.random.default_rng(SHUFFLE_SEED).permutation(len(photos))]
    seen = 0
    with torch.no_grad():
        for start in range(0, len(paths), batch_size):
            inputs = preprocessed(paths[start:start + batch_size], embedder.config.data_config, num_workers)
            if len(inputs):
                adapted.forward_features(torch.from_numpy(inputs).to(target))
                seen += len(inputs)
    if not seen:
        raise AdaptationError(f"none of the {len(paths)} photos given can be read: AdaBN needs the shop's own "
                              "photos, e.g. a folder of customer photos")
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum
    adapted.to("cpu").eval()
    digest = weights_digest(adapted.state_dict())
    adapted.config = dataclasses.replace(embedder.config, weights=f"checkpoint:{digest}", source=None)
    log.info("re-estimated %d BatchNorm layers of %s on %d photos (weights %s)", len(layers),
             embedder.config.label, seen, digest)
    return adapted
