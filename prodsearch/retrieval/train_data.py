"""Training data: labelled photos, the paper's augmentation, balanced subsets, cached features."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import transforms

from prodsearch.errors import ProdsearchError
from prodsearch.retrieval.augment import CustomerPhoto
from prodsearch.retrieval.degrade import Degrade
from prodsearch.retrieval.images import ImageLoadError, load_image
from prodsearch.retrieval.sampling import seeded

# Below this many files, starting worker processes costs more than it saves.
MIN_FILES_FOR_WORKERS = 32


def decode_worker_init(_worker_id: int) -> None:
    # Workers only decode; one thread each leaves the cores to the model.
    torch.set_num_threads(1)

log = logging.getLogger(__name__)


class TrainingError(ProdsearchError):
    """A training set or configuration that cannot be trained on."""


@dataclass(frozen=True)
class LabelledSet:
    """Image paths with integer labels into ``classes`` (SKUs, sorted)."""

    paths: list[str]
    labels: np.ndarray
    classes: list[str]

    @classmethod
    def from_items(cls, items: Sequence, classes: list[str] | None = None) -> "LabelledSet":
        """From catalog listing items; with ``classes``, items of other SKUs are left out."""
        classes = classes or sorted({it.sku for it in items})
        index = {sku: i for i, sku in enumerate(classes)}
        kept = [it for it in items if it.sku in index]
        return cls([os.fspath(it.path) for it in kept], np.array([index[it.sku] for it in kept], dtype=np.int64), classes)

    def subset(self, indices: np.ndarray) -> "LabelledSet":
        return LabelledSet([self.paths[i] for i in indices], self.labels[indices], self.classes)

    def __len__(self) -> int:
        return len(self.paths)


def train_transform(img_size: int, resize: int, mean: Sequence[float], std: Sequence[float],
                    augment: str = "standard", flip: bool = True) -> transforms.Compose:
    """Augment (:func:`photo_augmentation`) with a random crop (512 -> 448 in the paper's
    high-resolution setting, 256 -> 224 as the baseline), then normalise."""
    return transforms.Compose([*photo_augmentation(resize, augment, flip, crop=img_size).transforms,
                               transforms.ToTensor(), transforms.Normalize(mean, std)])


def photo_augmentation(size: int, augment: str = "standard", flip: bool = True,
                       crop: int | None = None) -> transforms.Compose:
    """PIL in, PIL out: ``standard`` resizes the short side to ``size``, then crops at random
    (``crop``), flips and jitters the colours, as for ImageNet; ``customer`` renders a customer's
    phone photo of it (:class:`CustomerPhoto`, ``size`` square), then crops; ``degrade`` is
    ``standard`` with half the photos first made small and blurry (:class:`Degrade`: the condition
    of far shelf photos and video crops)."""
    cropping = [transforms.RandomCrop(crop)] if crop else []
    if augment == "customer":
        return transforms.Compose([CustomerPhoto(size, flip), *cropping])
    if augment not in ("standard", "degrade"):
        raise ValueError(f"unknown augmentation {augment!r}; one of standard, customer, degrade")
    degrading = [transforms.RandomApply([Degrade()], p=0.5)] if augment == "degrade" else []
    return transforms.Compose([*degrading, transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
                               *cropping,
                               *([transforms.RandomHorizontalFlip()] if flip else []),
                               transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4)])


class CachedViews(Dataset):
    """(features of one of a photo's cached views, label) for a key ``(index, draw seed)``
    (:class:`~prodsearch.retrieval.sampling.EpochBatches`): the seed picks the view, so the same
    photo twice in a batch is most often two views of it (``features``: photos x views x dim)."""

    def __init__(self, features: torch.Tensor, labels: np.ndarray):
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: tuple[int, int]):
        i, seed = key
        return self.features[i, seed % self.features.shape[1]], int(self.labels[i])


class AugmentedImages(Dataset):
    """(augmented image tensor, label) for a key ``(index, draw seed)``; the seed draws the
    augmentation. An unreadable file is replaced by the next readable photo of its SKU, so every
    batch keeps its size (processes sharing a batch exchange equal shares of it)."""

    def __init__(self, data: LabelledSet, transform, min_side: int):
        self.data, self.transform, self.min_side = data, transform, min_side
        self.same_label = {label: np.flatnonzero(data.labels == label) for label in np.unique(data.labels)}

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: tuple[int, int]):
        i, seed = key
        label = int(self.data.labels[i])
        peers = self.same_label[label]
        start = int(np.searchsorted(peers, i))
        for j in (int(p) for p in np.roll(peers, -start)):
            try:
                image = load_image(self.data.paths[j], min_side=self.min_side)
            except ImageLoadError as exc:
                log.warning("skipping %s in training: %s", self.data.paths[j], exc)
                continue
            with seeded(seed):
                return self.transform(image), label
        raise TrainingError(f"no photo of SKU {self.data.classes[label]} can be read, e.g. {self.data.paths[i]}")


def balanced_subset(labels: np.ndarray, max_per_class: int = 5, seed: int = 0) -> np.ndarray:
    """At most ``max_per_class`` random indices of each class (all of a smaller class), sorted."""
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        chosen.append(rng.choice(members, size=min(max_per_class, len(members)), replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
