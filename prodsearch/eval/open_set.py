"""Open-set metrics: how well a rule tells photos of catalog products from photos of others.

Inputs are a rule's values (higher: surer the answer is a catalog product) of the *known* photos
(their SKU is in the catalog) with whether each one's first SKU is right, and of the *unknown*
photos (their product is not in the catalog). A threshold accepts values at or above it.

- AUROC: the chance that a known photo scores above an unknown one (ties count half).
- DIR@FAR: detection-and-identification rate at a false-alarm rate (open-set face
  identification): at the lowest threshold that accepts at most that share of unknowns, the share
  of known photos accepted *and* right.
- OpenAUC (Wang et al., NeurIPS 2022): the chance that a known photo is right *and* scores above an
  unknown one; unlike AUROC it drops when the accepted answers are wrong.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

FARS = (0.01, 0.05)  # the false-alarm rates DIR is reported at


def _arrays(known, correct, unknown) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    known, unknown = np.asarray(known, dtype=np.float64), np.asarray(unknown, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    if correct.shape != known.shape:
        raise ValueError(f"{correct.size} correctness flags for {known.size} known values")
    return known, correct, unknown


def _wins(known: np.ndarray, unknown: np.ndarray) -> np.ndarray:
    """For each known value: unknown values below it, plus half of those equal to it."""
    ordered = np.sort(unknown)
    below = np.searchsorted(ordered, known, side="left")
    at_or_below = np.searchsorted(ordered, known, side="right")
    return below + 0.5 * (at_or_below - below)


def auroc(known, unknown) -> float:
    """Area under the ROC curve of known against unknown values; NaN if either is empty."""
    known, _, unknown = _arrays(known, np.zeros(np.shape(known), dtype=bool), unknown)
    if not known.size or not unknown.size:
        return float("nan")
    return float(_wins(known, unknown).sum() / (known.size * unknown.size))


def open_auc(known, correct, unknown) -> float:
    """OpenAUC: P(a known photo is right and scores above an unknown one); NaN if either is empty."""
    known, correct, unknown = _arrays(known, correct, unknown)
    if not known.size or not unknown.size:
        return float("nan")
    return float(_wins(known[correct], unknown).sum() / (known.size * unknown.size))


def far_threshold(unknown, far: float, known=()) -> float:
    """The lowest threshold that accepts at most ``far`` of the ``unknown`` values, placed halfway
    to the next value seen above it (among ``known`` too), so that values close to the last
    rejected unknown are not accepted by a hair."""
    if not 0 <= far < 1:
        raise ValueError(f"a false-accept rate is at least 0 and below 1, not {far}")
    unknown = np.sort(np.asarray(unknown, dtype=np.float64))[::-1]
    if not unknown.size:
        raise ValueError("no unknown values to set a threshold on")
    allowed = int(np.floor(far * unknown.size + 1e-9))  # unknowns that may be accepted
    edge = unknown[allowed]  # the highest unknown that must be rejected (and all equal to it)
    seen = np.concatenate([unknown, np.asarray(known, dtype=np.float64)])
    above = seen[seen > edge]
    return float((edge + above.min()) / 2) if above.size else float(np.nextafter(edge, np.inf))


def dir_at_far(known, correct, unknown, far: float) -> float:
    """DIR at the threshold :func:`far_threshold` sets for ``far``; NaN without unknowns or knowns."""
    known, correct, unknown = _arrays(known, correct, unknown)
    if not known.size or not unknown.size:
        return float("nan")
    threshold = far_threshold(unknown, far, known)
    return float(np.mean(correct & (known >= threshold)))


def dir_far_curve(known, correct, unknown) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, FAR, DIR) at every value seen, thresholds falling: the curve the report draws."""
    known, correct, unknown = _arrays(known, correct, unknown)
    thresholds = np.unique(np.concatenate([known, unknown]))[::-1]
    far = 1 - np.searchsorted(np.sort(unknown), thresholds, side="left") / max(1, unknown.size)
    right = np.sort(known[correct])
    dir_ = (right.size - np.searchsorted(right, thresholds, side="left")) / max(1, known.size)
    return thresholds, far, dir_


@dataclass(frozen=True)
class Rates:
    """What a threshold does: known photos accepted and right, known rejected, unknowns accepted."""

    threshold: float
    known_accuracy: float  # accepted and right, of all known photos
    known_rejected: float
    false_accept_rate: float | None  # None: no unknown photos

    def to_dict(self) -> dict:
        return asdict(self)


def rates_at(threshold: float, known, correct, unknown=()) -> Rates:
    known, correct, unknown = _arrays(known, correct, unknown)
    accepted = known >= threshold
    return Rates(float(threshold), float(np.mean(correct & accepted)) if known.size else 0.0,
                 float(np.mean(~accepted)) if known.size else 0.0,
                 float(np.mean(unknown >= threshold)) if unknown.size else None)


@dataclass(frozen=True)
class OpenSetScores:
    """The threshold-free metrics of one rule."""

    auroc: float
    dir_at_far: dict[str, float]  # "0.01", "0.05" -> DIR
    open_auc: float

    def to_dict(self) -> dict:
        return asdict(self)


def open_set_scores(known, correct, unknown) -> OpenSetScores:
    return OpenSetScores(auroc(known, unknown), {str(f): dir_at_far(known, correct, unknown, f) for f in FARS},
                         open_auc(known, correct, unknown))
