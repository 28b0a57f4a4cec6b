"""``prodsearch tune``: choose an index's settings on the shop's own labelled photos.

Every setting chosen on one dataset lost on a shop it had never seen (issue 28: 160 px beat the
default 224 by 4.6 points there, and every lever adopted on Grocery Store made it worse), so a shop
is judged on its own photos. Each candidate (input sizes, views, the ensemble, int8, training within
a budget) embeds the catalog and the shop's photos, and is scored by exact cosine search in numpy:
a SKU scores its best catalog photo. With few photos the scores are uncertain, so the choice is the
one-standard-error rule on paired differences (same photos): the simplest candidate whose top-1 is
within one standard error of the best's, rather than the best by a noisy margin.

Each candidate's per-photo hits are kept under ``DIR/tune/``, keyed by the candidate and a digest of
the catalog and photo lists: a run that was stopped skips what it finished, and a finished training
run is reused (an interrupted one resumes from its ``last.pt``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from prodsearch.catalog.files import write_atomically
from prodsearch.catalog.listing import Item, Listing, read_listing
from prodsearch.choices import DEFAULT_MODEL, TUNE_BUDGET_MINUTES
from prodsearch.errors import ProdsearchError
from prodsearch.indexer.manifest import (
    TUNE_DIR,
    check_target,
    read_manifest,
    write_manifest,
)
from prodsearch.retrieval.embedding import FilesDone, embed_files
from prodsearch.train_config import TrainConfig

log = logging.getLogger(__name__)

Z95 = 1.959963984540054  # the normal quantile of a two-sided 95% interval
FEW_PHOTOS = 10  # below this many photos no candidate can be told from another: warned
DEFAULT_BUDGET_MINUTES = TUNE_BUDGET_MINUTES
TOP_K = 5
RULE = ("one standard error: the simplest candidate whose top-1 is at least the best top-1 minus the standard "
        "error of their paired difference on the same photos")
MEASURE_STEPS = 3  # training batches timed before the run's length is estimated against the budget
CACHE_VERSION = 1


class TuneError(ProdsearchError):
    """The catalog and photos cannot be tuned on as given (say what to give instead)."""


@dataclass(frozen=True)
class Candidate:
    """One setting: the ``prodsearch index`` options it stands for. ``trained`` names a training
    recipe whose model it indexes (``model`` is then filled in with the run's model.pt)."""

    name: str
    model: str
    views: int = 1
    precision: str = "fp32"
    trained: bool = False

    def options(self) -> str:
        """The exact ``prodsearch index`` options of this setting."""
        views = f" --views {self.views}" if self.views > 1 else ""
        return f"--model {self.model}{views} --precision {self.precision}"

    def index_settings(self) -> dict[str, Any]:
        """The same options as :func:`~prodsearch.indexer.build.build_index` keywords."""
        return {"model": self.model, "views": self.views, "precision": self.precision}


LITE0 = DEFAULT_MODEL
# The candidates, simplest first: the order is what "simpler" means to the one-standard-error rule.
FIXED = (
    Candidate("plain", LITE0),
    Candidate("size160", f"{LITE0}@160"),
    Candidate("size192", f"{LITE0}@192"),
    Candidate("size288", f"{LITE0}@288"),
    Candidate("views6", LITE0, views=6),
    Candidate("ensemble", f"{LITE0}+tf_efficientnet_lite2@448"),
)
INT8 = "int8"  # the int8 model of the best fp32 candidate above
# Training recipes, as TrainConfig fields over the plain defaults (whole network at 224, 10 epochs).
TRAINED: dict[str, dict[str, Any]] = {"whole-224": {}}
CANDIDATES = tuple(c.name for c in FIXED) + (INT8, *TRAINED)


@dataclass
class Scored:
    """A candidate's outcome: per-photo hits (0/1, in the photos' order), or why it was not scored."""

    candidate: Candidate
    top1: np.ndarray | None = None
    top5: np.ndarray | None = None
    minutes: float = 0.0
    cached: bool = False
    skipped: str | None = None

    @property
    def scored(self) -> bool:
        return self.top1 is not None

    def row(self) -> dict[str, Any]:
        """Its line of the table (and of the manifest's ``tuning.candidates``)."""
        row: dict[str, Any] = {"name": self.candidate.name, "options": self.candidate.options(), "top1": None,
                               "low": None, "high": None, "top5": None, "minutes": round(self.minutes, 3)}
        if self.top1 is not None and self.top5 is not None:
            n = len(self.top1)
            low, high = wilson_interval(int(self.top1.sum()), n)
            row |= {"top1": float(self.top1.mean()) if n else 0.0, "low": low, "high": high,
                    "top5": float(self.top5.mean()) if n else 0.0}
        if self.skipped:
            row["skipped"] = self.skipped
        return row


@dataclass
class TuneReport:
    results: list[Scored]
    chosen: Scored
    best: Scored
    reason: str  # why the chosen one won, in one line
    photos: int
    skus: int
    catalog_photos: int
    unreadable: dict[str, str] = field(default_factory=dict)  # photo -> why it counts as a miss
    warnings: list[str] = field(default_factory=list)

    def tuning(self) -> dict[str, Any]:
        """The manifest's ``tuning`` field: the choice and its evidence."""
        return {"chosen": self.chosen.candidate.name, "options": self.chosen.candidate.options(),
                "photos": self.photos, "skus": self.skus, "rule": RULE, "reason": self.reason,
                "candidates": [{k: v for k, v in r.row().items()} for r in self.results]}

    def to_dict(self) -> dict[str, Any]:
        return self.tuning() | {"catalog_photos": self.catalog_photos, "warnings": self.warnings,
                                "unreadable": self.unreadable,
                                "cached": [r.candidate.name for r in self.results if r.cached]}


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion: honest at few photos and at 0 or 1, where the
    normal approximation collapses to a point."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    low = 0.0 if successes <= 0 else max(0.0, centre - half)  # exactly 0 and 1 at the ends, not 1 - 1e-16
    return low, 1.0 if successes >= n else min(1.0, centre + half)


@dataclass(frozen=True)
class Choice:
    chosen: int  # row of the chosen candidate
    best: int  # row of the highest top-1 (the simplest of equals)
    se: np.ndarray  # per row: standard error of its paired difference with the best (0 for the best)


def choose(top1: np.ndarray) -> Choice:
    """The one-standard-error rule on paired per-photo hits ``top1`` (candidates x photos, 0/1,
    simplest candidate first): best = highest top-1; chosen = the first row whose top-1 is at least
    the best's minus the standard error of the mean of (row - best) over the same photos."""
    hits = np.asarray(top1, dtype=np.float64)
    if hits.ndim != 2 or not hits.shape[0] or not hits.shape[1]:
        raise ValueError("choose needs at least one candidate scored on at least one photo")
    means = hits.mean(axis=1)
    best = int(np.argmax(means))
    n = hits.shape[1]
    diffs = hits - hits[best]
    se = diffs.std(axis=1, ddof=1) / math.sqrt(n) if n > 1 else np.zeros(len(hits))
    chosen = next(i for i in range(len(hits)) if means[i] >= means[best] - se[i] - 1e-12)
    return Choice(chosen, best, se)


def photo_hits(catalog_vectors: np.ndarray, catalog_skus: Sequence[str], photo_vectors: np.ndarray,
               photo_skus: Sequence[str], k: int = TOP_K) -> tuple[np.ndarray, np.ndarray]:
    """(top-1 hit, top-k hit) of each photo, by exact cosine search: a SKU scores its best catalog
    photo; a SKU tied with the right one ranks ahead of it (ties are never counted as hits)."""
    skus = sorted(set(catalog_skus))
    code = {s: i for i, s in enumerate(skus)}
    codes = np.array([code[s] for s in catalog_skus])
    order = np.argsort(codes, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(codes[order]) != 0])
    sims = np.asarray(photo_vectors, np.float32) @ np.asarray(catalog_vectors, np.float32)[order].T
    per_sku = np.maximum.reduceat(sims, starts, axis=1) if len(photo_skus) else np.zeros((0, len(skus)), np.float32)
    truth = np.array([code[s] for s in photo_skus], dtype=np.int64)
    right = per_sku[np.arange(len(truth)), truth]
    rank = (per_sku >= right[:, None]).sum(axis=1) - 1  # SKUs at least as close as the right one
    return rank == 0, rank < k


def check_photos(catalog: Listing, photos: Listing) -> None:
    """Every photo's SKU must be in the catalog: a photo of another product scores nothing."""
    known = set(catalog.skus)
    unknown = sorted({it.sku for it in photos.items} - known)
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise TuneError(f"{len(unknown)} SKUs of the --val photos are not in the catalog {catalog.source}: {shown}; "
                        "give photos of catalog products only (tune scores how often their own SKU is found)")


def listings_digest(catalog: Listing, photos: Listing) -> str:
    """What makes two runs measure the same thing: every photo's path, SKU, size and time."""
    h = hashlib.sha256()
    for kind, listing in (("catalog", catalog), ("photos", photos)):
        for it in listing.items:
            try:
                st = os.stat(it.path)
                stamp = f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                stamp = "unreadable"
            h.update(f"{kind}\0{it.path}\0{it.sku}\0{stamp}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]


def score_candidate(candidate: Candidate, encoder: Any, catalog: Sequence[Item], photos: Sequence[Item], *,
                    batch_size: int | None = None, num_workers: int | None = None,
                    progress: FilesDone | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """(top-1 hits, top-5 hits, unreadable photos) of one candidate: catalog and photos embedded in one
    pass; a photo that cannot be read counts as a miss."""
    paths = [it.path for it in catalog] + [it.path for it in photos]
    embedded = embed_files(encoder, paths, batch_size=batch_size, num_workers=num_workers, progress=progress,
                           views=candidate.views)
    cat, shots = embedded.split(len(catalog))
    if not len(cat.positions):
        raise TuneError(f"none of the {len(catalog)} catalog photos can be read; check the catalog")
    top1, top5 = np.zeros(len(photos), bool), np.zeros(len(photos), bool)
    t1, t5 = photo_hits(cat.vectors, [catalog[i].sku for i in cat.positions], shots.vectors,
                        [photos[i].sku for i in shots.positions])
    top1[shots.positions], top5[shots.positions] = t1, t5
    return top1, top5, {str(photos[i].path): why for i, why in shots.failures.items()}


class _OverBudget(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class Tuner:
    """One tune run: the listings, where its results are kept, and how it embeds and trains."""

    catalog: Listing
    photos: Listing
    cache: Path
    budget_minutes: float = DEFAULT_BUDGET_MINUTES
    device: str = "auto"
    batch_size: int | None = None
    num_workers: int | None = None
    train_settings: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields over every recipe's
    announce: Callable[[str], None] = lambda line: None
    progress: FilesDone | None = None
    train_progress: Callable[[dict[str, Any]], None] | None = None  # each training batch's figures
    digest: str = ""
    unreadable: dict[str, str] = field(default_factory=dict)
    training_seconds: float = 0.0

    def __post_init__(self) -> None:
        self.digest = self.digest or listings_digest(self.catalog, self.photos)

    def run(self, names: Sequence[str] = CANDIDATES) -> list[Scored]:
        results: list[Scored] = []
        wanted = [c for c in FIXED if c.name in names]
        for i, candidate in enumerate(wanted, start=1):
            results.append(self.scored(candidate, f"{i}/{len(wanted)}"))
        if INT8 in names:
            results.append(self.int8_of([r for r in results if r.scored]))
        for name in TRAINED:
            if name in names:
                results.append(self.trained(name))
        return results

    def scored(self, candidate: Candidate, step: str = "", calibration: bool = False, spent: float = 0.0) -> Scored:
        """Scores of ``candidate``: from the cache, or measured now (and cached)."""
        path = self.cache / f"{candidate.name}-{self._key(candidate)}.json"
        cached = _read_cache(path)
        if cached is not None:
            self.unreadable |= cached["unreadable"]
            self.announce(f"{candidate.name}: measured by an earlier run, reused ({path.name})")
            log.info("reusing %s for %s", path, candidate.name)
            return Scored(candidate, np.asarray(cached["top1"], bool), np.asarray(cached["top5"], bool),
                          cached["minutes"], cached=True)
        from prodsearch.retrieval.encoders import create_encoder

        self.announce(f"{candidate.name}{f' ({step})' if step else ''}: {candidate.options()}")
        start = time.perf_counter()
        options = ({"runtime": "onnx", "device": "cpu"} if candidate.precision == "int8"
                   else {"runtime": "auto", "device": self.device})
        encoder = create_encoder(candidate.model, precision=candidate.precision, **options,
                                 calibration=[it.path for it in self.catalog.items] if calibration else ())
        top1, top5, unreadable = score_candidate(candidate, encoder, self.catalog.items, self.photos.items,
                                                 batch_size=self.batch_size, num_workers=self.num_workers,
                                                 progress=self.progress)
        minutes = spent + (time.perf_counter() - start) / 60
        self.unreadable |= unreadable
        self.cache.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps({"version": CACHE_VERSION, "name": candidate.name,
                                           "options": candidate.options(), "top1": top1.astype(int).tolist(),
                                           "top5": top5.astype(int).tolist(), "minutes": minutes,
                                           "unreadable": unreadable}).encode())
        return Scored(candidate, top1, top5, minutes)

    def int8_of(self, fp32: list[Scored]) -> Scored:
        """The int8 model of the best fp32 candidate (the simplest of equals), scored like the others."""
        if not fp32:
            return Scored(Candidate(INT8, LITE0, precision="int8"), skipped="no fp32 candidate was scored to quantize")
        base = max(fp32, key=lambda r: float(r.top1.mean()) if r.top1 is not None else -1.0).candidate
        candidate = replace(base, name=INT8, precision="int8")
        try:
            return self.scored(candidate, calibration=True)
        except ProdsearchError as exc:  # ONNX Runtime cannot quantize or run it here
            return Scored(candidate, skipped=f"int8 cannot run here: {exc}")

    def trained(self, name: str) -> Scored:
        """A training recipe's model, trained (or reused, or resumed) within the budget, then scored."""
        out = self.cache / f"train-{name}"
        # The shop's photos are its --val: train reports its comparison with the untrained model on them,
        # and holds none of the catalog out for it.
        config = TrainConfig(train=str(self.catalog.source), out=str(out), val=str(self.photos.source),
                             device=self.device,
                             **(TRAINED[name] | self.train_settings))
        candidate = Candidate(name, str(out / "model.pt"), trained=True)
        if self.budget_minutes <= 0:
            return Scored(candidate, skipped="not trained: --budget 0")
        if not (out / "model.pt").is_file() or not _same_run(out, config):
            start = time.perf_counter()
            try:
                self._train(name, config, out)
            except _OverBudget as stop:
                return Scored(candidate, minutes=(time.perf_counter() - start) / 60, skipped=stop.reason)
            except ProdsearchError as exc:
                return Scored(candidate, minutes=(time.perf_counter() - start) / 60, skipped=f"training failed: {exc}")
            spent = (time.perf_counter() - start) / 60
        else:
            self.announce(f"{name}: trained by an earlier run, reused ({out / 'model.pt'})")
            spent = _saved_minutes(out)
        return self.scored(candidate, spent=spent)

    def _train(self, name: str, config: TrainConfig, out: Path) -> None:
        """Train ``config``, stopped as soon as its measured rate says it cannot finish in the budget
        left: after MEASURE_STEPS batches, the images still to see divided by the images per second."""
        from prodsearch.retrieval.training import train

        resume = out / "last.pt" if (out / "last.pt").is_file() and _same_run(out, config) else None
        budget_s = self.budget_minutes * 60 - self.training_seconds
        photos, epochs = len(self.catalog.items), sum(config.stage_epochs())
        self.announce(f"{name}: training {config.epochs} epochs of {photos} photos at {config.img_size} px "
                      f"(budget left {budget_s / 60:.1f} min){', resuming ' + str(resume) if resume else ''}")
        start = time.perf_counter()
        steps = 0

        def check(figures: dict[str, Any]) -> None:
            nonlocal steps
            steps += 1
            if self.train_progress is not None:
                self.train_progress(figures)
            rate = figures.get("images_per_second") or 0.0
            if steps < MEASURE_STEPS or rate <= 0:
                return
            done = (figures["epoch"] - 1) * photos + figures["step"] * config.batch_size
            left = max(0.0, (photos * epochs - done) / rate)
            elapsed = time.perf_counter() - start
            if elapsed + left > budget_s:
                raise _OverBudget(f"not trained: measured {rate:.1f} training images/s over {steps} batches, so "
                                  f"{epochs} epochs of {photos} photos need about {(elapsed + left) / 60:.1f} min, "
                                  f"more than the {budget_s / 60:.1f} min of --budget left (a larger --budget "
                                  "continues from the last finished epoch)")

        try:
            train(config, resume=resume, progress=check)
        finally:
            self.training_seconds += time.perf_counter() - start
        (out / "tune-minutes.json").write_text(json.dumps({"minutes": (time.perf_counter() - start) / 60}))

    def _key(self, candidate: Candidate) -> str:
        identity = {"v": CACHE_VERSION, "options": candidate.options(), "listings": self.digest,
                    "train": _model_stamp(candidate) if candidate.trained else None}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def _model_stamp(candidate: Candidate) -> str:
    try:
        st = os.stat(candidate.model)
        return f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        return ""


def _read_cache(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("version") == CACHE_VERSION else None


def _same_run(out: Path, config: TrainConfig) -> bool:
    """Whether ``out`` holds a run of ``config`` (where it ran aside)."""
    try:
        saved = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        return False
    ignore = ("device", "workers")
    return {k: v for k, v in saved.items() if k not in ignore} == {
        k: v for k, v in config.to_dict().items() if k not in ignore}


def _saved_minutes(out: Path) -> float:
    try:
        return float(json.loads((out / "tune-minutes.json").read_text())["minutes"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def check_candidates(names: Sequence[str]) -> list[str]:
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown or not names:
        raise TuneError(f"unknown candidate {', '.join(unknown) or '(none given)'}; choose from: {', '.join(CANDIDATES)}")
    return [n for n in CANDIDATES if n in names]


def tune(catalog: str | os.PathLike, photos: str | os.PathLike, index_dir: str | os.PathLike, *,
         candidates: Sequence[str] = CANDIDATES, budget_minutes: float = DEFAULT_BUDGET_MINUTES,
         device: str = "auto", batch_size: int | None = None, num_workers: int | None = None,
         train_settings: dict[str, Any] | None = None, announce: Callable[[str], None] | None = None,
         progress: FilesDone | None = None,
         train_progress: Callable[[dict[str, Any]], None] | None = None) -> TuneReport:
    """Score ``candidates`` (names of :data:`CANDIDATES`) on the labelled ``photos`` against
    ``catalog`` and choose one by the one-standard-error rule. Results are kept in
    ``index_dir/tune/`` (the index itself is built by the caller: :func:`record_tuning`)."""
    names = check_candidates(list(candidates))
    index_dir = Path(index_dir)
    check_target(index_dir)
    catalog_listing, photo_listing = read_listing(catalog), read_listing(photos)
    check_photos(catalog_listing, photo_listing)
    tuner = Tuner(catalog_listing, photo_listing, index_dir / TUNE_DIR, budget_minutes, device, batch_size,
                  num_workers, dict(train_settings or {}), announce or (lambda line: None), progress, train_progress)
    results = tuner.run(names)
    return report_of(results, photo_listing, catalog_listing, tuner.unreadable)


def report_of(results: list[Scored], photos: Listing, catalog: Listing, unreadable: dict[str, str]) -> TuneReport:
    scored = [r for r in results if r.scored]
    if not scored:
        reasons = "; ".join(f"{r.candidate.name}: {r.skipped}" for r in results)
        raise TuneError(f"no candidate could be scored ({reasons}); choose others with --candidates")
    hits = np.stack([r.top1 for r in scored if r.top1 is not None])
    choice = choose(hits)
    chosen, best = scored[choice.chosen], scored[choice.best]
    top1 = lambda r: float(np.mean(r.top1))
    if choice.chosen == choice.best:
        reason = _why_best([r.candidate.name for r in scored], hits, choice)
    else:
        reason = (f"within one standard error ({choice.se[choice.chosen]:.3f}) of {best.candidate.name} "
                  f"({top1(best):.3f}) and simpler")
    n = len(photos.items)
    warnings = []
    if n < FEW_PHOTOS:
        warnings.append(f"only {n} photos: too few to tell the candidates apart (the intervals overlap); label "
                        "1-3 photos for a few dozen SKUs")
    if unreadable:
        warnings.append(f"{len(unreadable)} photos cannot be read and count as misses for every candidate")
    for line in warnings:
        log.warning("%s", line)
    return TuneReport(results, chosen, best, reason, n, len(photos.skus), len(catalog.items), unreadable, warnings)


def _why_best(names: list[str], hits: np.ndarray, choice: Choice) -> str:
    """Why the best top-1 won: every simpler candidate is more than one standard error below it
    (the closest one named), and which less simple ones tie with it."""
    top1 = hits.mean(axis=1).tolist()
    best = choice.best
    reason = f"best top-1 ({top1[best]:.3f})"
    if best > 0:
        runner = max(range(best), key=lambda i: (top1[i], -i))
        reason += (f"; the simpler {names[runner]} ({top1[runner]:.3f}) is more than one standard "
                   f"error ({choice.se[runner]:.3f}) below")
    else:
        reason += " and the simplest candidate"
    tied = [name for i, name in enumerate(names) if i > best and top1[i] == top1[best]]
    return reason + (f"; tied with {', '.join(tied)}, which {'is' if len(tied) == 1 else 'are'} less simple"
                     if tied else "")


def record_tuning(index_dir: str | os.PathLike, report: TuneReport, *, wait: float = 0.0) -> None:
    """Write the choice and its evidence into the index's manifest (``tuning``), under the writer lock."""
    from prodsearch.indexer.writer import IndexWriter

    index_dir = Path(index_dir)
    with IndexWriter(index_dir, "tune", wait=wait):
        write_manifest(index_dir, replace(read_manifest(index_dir), tuning=report.tuning()))
