"""Training recipes: what ``prodsearch train PHOTOS --out DIR`` runs when it is given nothing else.

Which recipe is best depends on what the shop has, measured on Grocery Store (BENCHMARKS.md, issue
16): a shop with only its clean catalog photos (a few per SKU) is best served by training nothing:
every training we measured on catalog photos alone (heads only, customer-photo views, 5 to 30
epochs) made shelf photos worse than the ImageNet features, while the index's views and an ensemble
of backbones made them better; so that recipe indexes instead of training. A shop with customer
photos fine-tunes the upper backbone at 448 px; a GPU runs the Products-10K recipe. ``auto`` tells
a catalog by its photos per SKU and picks ``gpu`` for the rest when training would run on CUDA. A recipe
only sets defaults: options given on the command line win.

No heavy imports: the command line reads these before it loads torch.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Iterable

from prodsearch.errors import ProdsearchError

# A training set whose SKUs have at most this many photos (median) is a catalog, not a photo collection.
CATALOG_ONLY_MAX_PHOTOS = 4


# What a catalog-only shop runs instead of training (BENCHMARKS.md, "Accuracy levers").
CATALOG_ONLY_INDEX = "--model lite0+lite2@448"


class CatalogOnlyError(ProdsearchError):
    """Asked to train on catalog photos alone, which makes shelf photos worse: index them instead."""


@dataclass(frozen=True)
class Recipe:
    name: str
    situation: str  # who it is for, in a user's words
    settings: dict[str, Any]  # TrainConfig fields
    trains: bool = True


RECIPES = {r.name: r for r in (
    Recipe("catalog-only", f"only catalog photos (at most {CATALOG_ONLY_MAX_PHOTOS} per SKU, median): no training, "
           f"index them with {CATALOG_ONLY_INDEX}", {}, trains=False),
    Recipe("customer-photos", "catalog and customer photos, CPU: the upper backbone fine-tuned at 448 px",
           dict(frozen_stages=4, img_size=448, resize=512, epochs=10, lr_steps=(7,), batch_size=32, accumulate=2)),
    Recipe("gpu", "a CUDA GPU: the Products-10K recipe, whole network at 448 px with the balanced-subset and "
           "accuracy-loss finetunes",
           dict(frozen_stages=0, img_size=448, resize=512, epochs=30, lr_steps=(20, 25), batch_size=64, accumulate=1,
                balanced_epochs=3, accuracy_epochs=3)),
)}
RECIPE_CHOICES = ("auto", *RECIPES, "none")


def photos_per_sku(skus: Iterable[str]) -> float:
    """The median number of photos per SKU of a training set's labels."""
    counts: dict[str, int] = {}
    for sku in skus:
        counts[sku] = counts.get(sku, 0) + 1
    return float(statistics.median(counts.values())) if counts else 0.0


def choose_recipe(name: str, median_photos: float, cuda: bool) -> Recipe | None:
    """The recipe called ``name``, or for ``auto`` the one for this training set and device;
    ``None`` for ``none`` (the plain defaults)."""
    if name == "none":
        return None
    if name != "auto":
        return RECIPES[name]
    if median_photos <= CATALOG_ONLY_MAX_PHOTOS:
        return RECIPES["catalog-only"]
    return RECIPES["gpu" if cuda else "customer-photos"]


def catalog_only_advice(train_set: str, median_photos: float) -> str:
    """Why nothing is trained on a catalog, and the command that serves it best."""
    return (f"{train_set} has {median_photos:g} photo(s) per SKU (median): a catalog, not customer photos. Training on "
            "catalog photos alone makes shelf photos worse (Grocery Store, catalog-only protocol, BENCHMARKS.md), so "
            f"nothing was trained. Index it untrained instead: prodsearch index {train_set} --index DIR "
            f"{CATALOG_ONLY_INDEX}. To train anyway: --recipe none (the plain defaults) or --recipe customer-photos.")
