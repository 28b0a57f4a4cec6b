""""Not in our catalog": the rule that turns a ranked answer into a SKU or a rejection.

A catalog never holds everything a customer photographs, and nearest-neighbour search always
finds *something*. A rule reads the first two SKUs of an answer (their best images' cosine
similarities ``s1`` and ``s2``) and accepts the first SKU when its value reaches a threshold:

- ``score``: ``s1``, the similarity of the match (PP-ShiTu's ``score_thres``);
- ``margin``: ``s1 - s2``, how far the match is ahead of the best *other* SKU;
- ``ratio``: ``d2 / d1`` with ``d = sqrt(2 - 2 s)`` the distances of unit vectors: how many times
  farther the best other SKU is than the match; the open-set nearest-neighbour rule of Mendes
  Junior et al. (2017), who accept ``d1 / d2`` below a threshold, written the other way up so that
  every rule here accepts values at or above its threshold.

An answer with a single SKU compares with ``s2 = -1`` (the farthest a unit vector can be).
``prodsearch calibrate`` picks the rule and its threshold; they are stored in ``catalog.db``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence, Union

import numpy as np

from prodsearch.errors import ProdsearchError

RULES = ("score", "margin", "ratio")
REJECTION_SETTING = "rejection"  # where catalog.db keeps the calibrated rule
NO_OTHER_SKU = -1.0  # s2 when the answer holds one SKU only
MIN_DISTANCE = 1e-6  # d1 of an identical photo: keeps the ratio finite


def rule_values(rule: str, s1: np.ndarray | float, s2: np.ndarray | float) -> np.ndarray:
    """The rule's value for first and second SKU similarities (arrays or numbers); higher is surer."""
    s1, s2 = np.asarray(s1, dtype=np.float64), np.asarray(s2, dtype=np.float64)
    if rule == "score":
        return s1
    if rule == "margin":
        return s1 - s2
    if rule == "ratio":
        d1 = np.sqrt(np.clip(2 - 2 * s1, 0, None)).clip(MIN_DISTANCE)
        return np.sqrt(np.clip(2 - 2 * s2, 0, None)) / d1
    raise ValueError(f"unknown rejection rule {rule!r}; one of {', '.join(RULES)}")


def check_threshold(threshold: float) -> None:
    """Refuse a threshold that is not a finite number (``nan``, ``inf``): it rejects everything or
    nothing, and JSON has no spelling for it."""
    if not math.isfinite(threshold):
        raise ProdsearchError(f"threshold must be a finite number, not {threshold}; e.g. 0.5 (prodsearch info "
                              "shows the index's calibrated rule)")


def top_two(scores: Sequence[float]) -> tuple[float, float]:
    """(s1, s2) of an answer's SKU scores, best first; an empty answer has nothing to accept."""
    if not len(scores):
        return NO_OTHER_SKU, NO_OTHER_SKU
    return float(scores[0]), float(scores[1]) if len(scores) > 1 else NO_OTHER_SKU


@dataclass(frozen=True)
class Decision:
    """Whether an answer's first SKU is accepted, and by what."""

    accepted: bool
    rule: str
    value: float
    threshold: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RejectRule:
    """A rule and its threshold; ``calibration`` keeps what ``prodsearch calibrate`` measured (the
    false-accept rate asked for, the rates reached, the photos and SKUs used)."""

    rule: str
    threshold: float
    calibration: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"unknown rejection rule {self.rule!r}; one of {', '.join(RULES)}")
        check_threshold(self.threshold)

    def decide(self, scores: Sequence[float]) -> Decision:
        """Accept or reject an answer, given its SKU scores best first (at least the first two)."""
        value = float(rule_values(self.rule, *top_two(scores)))
        return Decision(bool(len(scores)) and value >= self.threshold, self.rule, value, self.threshold)

    def with_threshold(self, threshold: float) -> "RejectRule":
        """The same rule at another threshold (``--threshold``), without the calibration's figures."""
        return RejectRule(self.rule, float(threshold))

    def to_dict(self) -> dict:
        return {"rule": self.rule, "threshold": self.threshold, "calibration": self.calibration}

    @classmethod
    def from_dict(cls, data: dict) -> "RejectRule":
        return cls(data["rule"], float(data["threshold"]), dict(data.get("calibration") or {}))


STORED = "stored"  # answer with the rule stored in the index (none there: no rejection)
Rejection = Union[RejectRule, float, str, None]  # what answers take: a rule, a threshold, STORED or None (off)


def resolve(rejection: Rejection, stored: RejectRule | None) -> RejectRule | None:
    """The rule an answer applies: :data:`STORED` is the index's (``None`` if it has none), a
    number is the stored rule's kind at that threshold (``score`` in an uncalibrated index:
    ``--threshold``), ``None`` turns rejection off (``--no-reject``)."""
    if rejection is None or isinstance(rejection, RejectRule):
        return rejection
    if rejection == STORED:
        return stored
    if isinstance(rejection, (int, float)) and not isinstance(rejection, bool):
        return (stored or RejectRule("score", 0.0)).with_threshold(float(rejection))
    raise ValueError(f"rejection must be a RejectRule, a threshold, {STORED!r} or None, not {rejection!r}")


def chosen(threshold: float | None = None, reject: bool = True) -> Rejection:
    """What ``--threshold`` / ``--no-reject`` (HTTP: ``threshold``, ``reject=false``) ask answers
    for: no rejection, the stored rule at another threshold, or the stored rule. A threshold that is
    not a finite number (``nan``, ``inf``) is refused: it would reject everything (or nothing) and
    has no JSON spelling."""
    if threshold is not None:
        check_threshold(threshold)
    return None if not reject else threshold if threshold is not None else STORED
