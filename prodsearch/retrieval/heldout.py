"""Training photos held out to compare the trained model with the untrained one on.

Without ``--val`` photos, ``train`` has nothing but its own photos to tell whether training helped
(issue 28: on a shop kept out of development the bare ``train`` handed back a model worse than no
training and said nothing). So before training it holds out about a tenth of them, at most one per
SKU and only from a SKU that keeps a photo, trains on the rest, and compares on the held-out ones
degraded as customer photos (:mod:`.degrade`: small, blurry, JPEG), with the rest as the catalog.
``OUT/heldout.csv`` records them (a catalog CSV of the degraded copies, with the photo each was
made from), so a resumed run holds out the same ones and ``eval OUT/heldout.csv`` can score them.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prodsearch.catalog.listing import Item
from prodsearch.retrieval.degrade import degraded_copy

HELD_OUT_FRACTION = 0.1  # of the training photos
HELD_OUT_MAX = 300  # photos: enough to tell a few points apart, few enough to embed in seconds
MIN_PHOTOS_TO_HOLD_OUT = 2  # a SKU gives one photo only when it keeps one (to be found, and trained on)
HELD_OUT_CSV = "heldout.csv"
HELD_OUT_DIR = "heldout"
_COLUMNS = ("image", "sku", "source")  # the degraded copy (relative to the CSV), its SKU, the photo it was made from


@dataclass(frozen=True)
class HeldOut:
    """The held-out photos: each training photo as listed, its degraded copy, its SKU."""

    sources: list[str]
    queries: list[Path]
    skus: list[str]

    def __len__(self) -> int:
        return len(self.sources)


def choose_held_out(skus: Sequence[str], seed: int, fraction: float = HELD_OUT_FRACTION,
                    cap: int = HELD_OUT_MAX) -> list[int]:
    """Indices (sorted) of the photos to hold out of a training set whose photos have ``skus``:
    about ``fraction`` of them, at most ``cap``, at most one per SKU and only from SKUs with
    ``MIN_PHOTOS_TO_HOLD_OUT`` photos or more; the same for the same ``skus`` and ``seed``."""
    members: dict[str, list[int]] = {}
    for i, sku in enumerate(skus):
        members.setdefault(sku, []).append(i)
    eligible = sorted(sku for sku, photos in members.items() if len(photos) >= MIN_PHOTOS_TO_HOLD_OUT)
    if not eligible:
        return []
    count = min(len(eligible), cap, max(1, round(fraction * len(skus))))
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(eligible), size=count, replace=False)
    return sorted(members[eligible[k]][int(rng.integers(len(members[eligible[k]])))] for k in sorted(chosen))


def hold_out(items: list[Item], out: str | os.PathLike, seed: int, *, resumed: bool,
             write: bool) -> tuple[list[Item], HeldOut | None]:
    """(the items to train on, the held-out photos or None where none can be held out).

    A new run chooses them (:func:`choose_held_out`) and, where it ``write`` s (rank 0), makes their
    degraded copies under ``OUT/heldout/`` and lists them in ``OUT/heldout.csv``; a ``resumed`` run
    reads that file (one started without it holds nothing out: it trained on every photo)."""
    path = Path(out) / HELD_OUT_CSV
    if resumed:
        held = read_held_out(path) if path.is_file() else None
    else:
        chosen = choose_held_out([it.sku for it in items], seed)
        held = HeldOut([str(items[i].path) for i in chosen], [_copy_path(Path(out), items[i].path, seed)
                                                              for i in chosen], [items[i].sku for i in chosen])
        if write and held.sources:
            for source, query in zip(held.sources, held.queries):
                degraded_copy(source, query, _copy_seed(source, seed))
            write_held_out(path, held)
        elif write:  # an earlier run's list in the same folder must not be read when this one resumes
            path.unlink(missing_ok=True)
    if not held:
        return items, None
    sources = set(held.sources)
    return [it for it in items if str(it.path) not in sources], held


def write_held_out(path: Path, held: HeldOut) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(_COLUMNS)
        for source, query, sku in zip(held.sources, held.queries, held.skus):
            writer.writerow([os.path.relpath(query, path.parent), sku, source])
    os.replace(tmp, path)


def read_held_out(path: Path) -> HeldOut:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return HeldOut([r["source"] for r in rows], [path.parent / r["image"] for r in rows], [r["sku"] for r in rows])


def _copy_seed(source: str | os.PathLike, seed: int) -> int:
    """The degradation's seed: the run's seed and the photo, so a copy's name says what it holds."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{os.fspath(source)}".encode()).digest()[:8], "big")


def _copy_path(out: Path, source: str | os.PathLike, seed: int) -> Path:
    # Named by its source and seed: degraded_copy keeps an existing file, which is then the same photo.
    return out / HELD_OUT_DIR / f"{_copy_seed(source, seed):016x}-{Path(source).stem}.jpg"
