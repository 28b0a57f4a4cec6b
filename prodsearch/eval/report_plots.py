"""PNG figures of the HTML evaluation report (:mod:`prodsearch.eval.html_report`).

matplotlib is imported inside :func:`_pyplot` so that importing this module stays cheap.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from prodsearch.eval.categories import CategoryAccuracy
from prodsearch.eval.open_set import FARS, dir_far_curve

MIN_FAR = 1e-3  # the left end of the DIR@FAR curve's log axis; a FAR of 0 is drawn there
COLOURS = {"genuine": "#1a7f37", "impostor": "#cf222e", "unknown": "#8250df", "threshold": "#24292f"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def category_chart(categories: Sequence[CategoryAccuracy], path: Path) -> Path:
    """Top-1 per category as horizontal bars, worst at the top (the order given)."""
    plt = _pyplot()
    fig = plt.figure(figsize=(7, max(2.0, 0.9 + 0.2 * len(categories))))
    ax = fig.add_subplot()
    labels = [f"{_short(c.category)} ({c.n})" for c in categories]
    y = np.arange(len(categories))
    ax.barh(y, [c.top1 for c in categories], color=[_shade(c.top1) for c in categories])
    for k, c in enumerate(categories):
        ax.text(c.top1 + 0.01, k, f"{c.top1:.0%}", va="center", fontsize=8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1.08), xlabel="SKU top-1 of the category's photos", title="Accuracy per category, worst first")
    return _save(fig, path)


def score_histograms(groups: dict[str, Sequence[float]], rule: str, threshold: float | None, path: Path) -> Path:
    """The rule's value of each group of photos (genuine, impostor, unknown) as the share of its
    group per bin, so that groups of different sizes compare; the threshold as a line."""
    plt = _pyplot()
    fig = plt.figure(figsize=(6, 4.2))
    ax = fig.add_subplot()
    everything = np.concatenate([np.asarray(v, dtype=np.float64) for v in groups.values()] or [np.zeros(0)])
    everything = everything[np.isfinite(everything)]
    if not everything.size:
        ax.text(0.5, 0.5, "no answers to draw", ha="center", va="center")
        ax.set_axis_off()
        return _save(fig, path)
    lo, hi = np.percentile(everything, [0.5, 99.5])  # a few huge ratios would squash the rest
    if threshold is not None and math.isfinite(threshold):
        lo, hi = min(lo, threshold), max(hi, threshold)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    bins = np.linspace(lo, hi, 41)
    for name, values in groups.items():
        values = np.asarray(values, dtype=np.float64)
        values = np.clip(values[np.isfinite(values)], lo, hi)
        if values.size:
            ax.hist(values, bins=bins, weights=np.full(values.size, 1 / values.size), histtype="step",
                    linewidth=1.8, color=COLOURS.get(name), label=f"{name} ({values.size})")
    if threshold is not None:
        ax.axvline(threshold, color=COLOURS["threshold"], linestyle="--", label=f"threshold {threshold:.4g}")
    ax.set(xlabel=f"{rule} (higher: surer it is a catalog product)", ylabel="share of the group's photos",
           title="Right answers, wrong answers, products not in the catalog")
    ax.legend()
    return _save(fig, path)


def dir_far_chart(known: Sequence[float], correct: Sequence[bool], unknown: Sequence[float],
                  operating_point: tuple[float, float, float] | None, rule: str, path: Path) -> Path:
    """DIR against FAR over every threshold (log FAR axis from :data:`MIN_FAR`); the applied
    threshold's ``(FAR, known accuracy, threshold)`` marked."""
    plt = _pyplot()
    _, far, dir_ = dir_far_curve(known, correct, unknown)
    fig = plt.figure(figsize=(6, 4.2))
    ax = fig.add_subplot()
    ax.step(np.clip(far, MIN_FAR, 1), dir_, where="post", color=COLOURS["genuine"], linewidth=1.8,
            label=f"{rule}: every threshold")
    for f in FARS:
        ax.axvline(f, color="#8c959f", linestyle=":", linewidth=1)
    if operating_point is not None:
        x, y, threshold = operating_point
        ax.plot([max(x, MIN_FAR)], [y], "o", color=COLOURS["impostor"], markersize=8,
                label=f"threshold {threshold:.4g}: FAR {x:.1%}, known accuracy {y:.1%}")
    ax.set_xscale("log")
    ax.set(xlim=(MIN_FAR, 1), ylim=(0, 1.02), xlabel="false-accept rate of products not in the catalog (FAR)",
           ylabel="known photos accepted and right (DIR)", title="DIR@FAR")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper left")
    return _save(fig, path)


def _short(category: str, width: int = 38) -> str:
    return category if len(category) <= width else "…" + category[-(width - 1):]


def _shade(top1: float) -> str:
    return "#cf222e" if top1 < 0.5 else "#d4a72c" if top1 < 0.8 else "#1a7f37"
