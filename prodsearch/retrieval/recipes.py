"""Training recipes: what ``prodsearch train PHOTOS --out DIR`` runs when it is given nothing else.

Which recipe is best depends on what the shop has. ``auto`` follows the evidence of several
conditions (BENCHMARKS.md, "Accuracy on several conditions"), not of one dataset: on a shop kept
out of development (issue 28: 120 SKUs, about 5.6 web catalog photos each, queries cropped from
in-store video) the recipe chosen on Grocery Store alone, ``customer-photos`` (448 px, 4 stages
frozen), gave top-1 0.224 where the untrained embedder gave 0.318, while the whole network trained
at 224 px (``whole-224``, the plain defaults) gave 0.422. So on a CPU ``auto`` trains the whole
network at 224 px with the degrade augmentation (``whole-224-degrade``) wherever the SKUs have
several photos (median), and on CUDA runs the Products-10K ``gpu`` recipe. Only a catalog of one
photo per SKU is not trained on (Grocery Store's catalog-only protocol: every training on one
iconic photo per SKU made shelf photos worse), and the command says
what to index instead. ``customer-photos`` stays an explicit choice. Whatever runs, ``train``
compares its model with the untrained one and says when it is not better
(:mod:`prodsearch.retrieval.comparison`). A recipe only sets defaults: options given on the command
line win.

No heavy imports: the command line reads these before it loads torch.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Iterable

from prodsearch.errors import ProdsearchError

# A training set whose SKUs have at most this many photos (median) is not trained on: one photo per SKU.
CATALOG_ONLY_MAX_PHOTOS = 1
# The recipe auto picks for the other training sets: on a CPU, and on a CUDA GPU.
# whole-224-degrade is the one trained recipe never below plain lite0 on a measured condition
# (BENCHMARKS.md, "Accuracy on several conditions": plain whole-224 lost 0.7 point on val few small).
AUTO_CPU_RECIPE, AUTO_GPU_RECIPE = "whole-224-degrade", "gpu"


# What a catalog-only shop runs instead of training: of the levers measured on the two conditions of
# one catalog photo per SKU (BENCHMARKS.md, "Accuracy on several conditions": A0, and A small with
# small, blurry queries), only views 6 is above plain lite0 on both, val and test (test A0 0.376 and
# A small 0.187 against 0.302 and 0.161); the lite0+lite2@448 ensemble, advised here before, loses
# 1.0 point on A small (test) and 1.5 on few small.
CATALOG_ONLY_INDEX = "--views 6"


class CatalogOnlyError(ProdsearchError):
    """Asked to train on catalog photos alone, which makes shelf photos worse: index them instead."""


@dataclass(frozen=True)
class Recipe:
    name: str
    situation: str  # who it is for, in a user's words
    settings: dict[str, Any]  # TrainConfig fields
    trains: bool = True


_WHOLE_224 = dict(frozen_stages=0, img_size=224, resize=256, epochs=10, lr_steps=(7,), batch_size=32, accumulate=2)
RECIPES = {r.name: r for r in (
    Recipe("catalog-only", f"one catalog photo per SKU (median {CATALOG_ONLY_MAX_PHOTOS} or less): no training, "
           f"index them with {CATALOG_ONLY_INDEX}", {}, trains=False),
    Recipe("whole-224", "catalog photos or customer photos on a CPU: the whole network at 224 px, 10 epochs",
           _WHOLE_224),
    Recipe("whole-224-degrade", "several photos per SKU on a CPU: whole-224 with half the training photos made "
           "small and blurry (--augment degrade), as far shelf photos and video crops are",
           {**_WHOLE_224, "augment": "degrade"}),
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
    return RECIPES[AUTO_GPU_RECIPE if cuda else AUTO_CPU_RECIPE]


def catalog_only_advice(train_set: str, median_photos: float) -> str:
    """Why nothing is trained on one photo per SKU, and the command that serves it best."""
    return (f"{train_set} has {median_photos:g} photo(s) per SKU (median): a catalog of one photo per product. "
            "Training on one catalog photo per SKU makes shelf photos worse (Grocery Store, catalog-only protocol, "
            f"BENCHMARKS.md), so nothing was trained. Index it untrained instead: prodsearch index {train_set} "
            f"--index DIR {CATALOG_ONLY_INDEX}, or with a few labelled customer photos let prodsearch tune "
            f"{train_set} --val PHOTOS --index DIR measure what serves them best. "
            f"With {CATALOG_ONLY_MAX_PHOTOS + 1} or more photos per SKU, train "
            f"chooses {AUTO_CPU_RECIPE}; to train anyway: --recipe {AUTO_CPU_RECIPE} (train then compares its model "
            "with the untrained one and says which is better).")
