"""Training with a frozen backbone (``--freeze-backbone``): its pooled features, computed once.

Every training photo is cached as ``views`` rows (view 0: the photo itself, then ``views - 1``
augmented ones, each drawn from its own seed), every validation photo as one. Processes of a
distributed run each compute their share of the photos and exchange them, so the cache costs
1/N of the time and every process holds all of it.
"""

from __future__ import annotations

import logging
import os
import tempfile

import torch

from prodsearch.retrieval.distributed import World, gather_shares
from prodsearch.retrieval.embedder import Embedder
from prodsearch.retrieval.embedding import embed_files
from prodsearch.retrieval.images import load_image
from prodsearch.retrieval.preprocess import decode_min_side
from prodsearch.retrieval.sampling import draw_seed, seeded
from prodsearch.retrieval.torch_encoder import TorchEncoder
from prodsearch.retrieval.train_data import LabelledSet, TrainingError, photo_augmentation
from prodsearch.train_config import TrainConfig

log = logging.getLogger(__name__)


def cache_features(embedder: Embedder, device: torch.device, config: TrainConfig, train: LabelledSet,
                   val: LabelledSet | None, world: World = World()) -> dict[str, torch.Tensor]:
    """``{"train": photos x views x dim, "val": photos x dim}`` pooled backbone features."""
    encoder = TorchEncoder(embedder, device, pooled=True)
    share = world.share(len(train))
    views = [_pooled(encoder, train.paths[share], "train", config.workers)]
    with tempfile.TemporaryDirectory(prefix="prodsearch-views-") as tmp:
        for v in range(1, config.views):
            paths = _augmented(embedder, config, train.paths, share, v, tmp)
            views.append(_pooled(encoder, paths, f"view {v}", config.workers))
            for path in paths:
                os.remove(path)
    cached = {"train": gather_shares(torch.stack(views, dim=1), len(train), world)}
    if val:
        val_share = world.share(len(val))
        cached["val"] = gather_shares(_pooled(encoder, val.paths[val_share], "val", config.workers), len(val), world)
    return cached


def _pooled(encoder: TorchEncoder, paths: list[str], name: str, workers: int | None) -> torch.Tensor:
    result = embed_files(encoder, paths, num_workers=workers)
    if result.failures:
        raise TrainingError(f"{len(result.failures)} {name} images could not be read, e.g. "
                            f"{paths[next(iter(result.failures))]}")
    log.info("cached %d %s features (%.1f img/s)", len(result.vectors), name, result.images_per_second)
    return torch.from_numpy(result.vectors)


def _augmented(embedder: Embedder, config: TrainConfig, paths: list[str], share: slice, view: int,
               folder: str) -> list[str]:
    """View ``view`` of the photos of ``share``, as high-quality JPEGs in ``folder``; each photo's
    augmentation is drawn from (seed, view, photo), whichever process draws it."""
    augment = photo_augmentation(config.resize, config.augment, config.hflip)
    min_side = decode_min_side(embedder.data_config)
    written = []
    for i in range(share.start, share.stop):
        out = os.path.join(folder, f"{view}-{i}.jpg")
        image = load_image(paths[i], min_side=min_side)
        with seeded(draw_seed(config.seed, view, i, 1)):
            augment(image).save(out, quality=95)
        written.append(out)
    return written
