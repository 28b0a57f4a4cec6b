"""PNG plots of :class:`CatalogStats`, one file per figure of the Cdiscount paper."""

from __future__ import annotations

import os
from pathlib import Path

from prodsearch.eval.stats import CatalogStats

FIGURES = ("images_per_product.png", "products_per_category.png", "category_cumulative_share.png",
           "duplicates.png")


def write_plots(stats: CatalogStats, out_dir: str | os.PathLike) -> list[Path]:
    """Draw every figure into ``out_dir``; return the files written."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in zip(FIGURES, (_images_per_product, _products_per_category, _cumulative_share, _duplicates)):
        fig = plt.figure(figsize=(7, 4.5))
        draw(fig, stats)
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(out / name)
    return written


def _images_per_product(fig, stats: CatalogStats) -> None:
    ax = fig.add_subplot()
    counts = stats.images_per_product
    ax.bar([str(k) for k in counts], list(counts.values()))
    ax.set(xlabel="images per product", ylabel="products", title=f"Images per product ({stats.products} products)")


def _products_per_category(fig, stats: CatalogStats) -> None:
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(stats.levels))
    bins = sorted({b for lv in stats.levels for b in lv.products_per_category_bins}, key=lambda b: int(b.split("-")[0]))
    for n, lv in enumerate(stats.levels):
        ax.bar([i + n * width for i in range(len(bins))], [lv.products_per_category_bins.get(b, 0) for b in bins],
               width, label=f"level {lv.level} ({lv.categories} categories)")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(bins))], bins, rotation=45)
    ax.set(xlabel="products per category (log2 bins)", ylabel="categories", title="Products per category")
    if stats.levels:
        ax.legend()


def _cumulative_share(fig, stats: CatalogStats) -> None:
    ax = fig.add_subplot()
    for lv in stats.levels:
        ranks = [(k + 1) / len(lv.cumulative_share) for k in range(len(lv.cumulative_share))]
        ax.plot(ranks, lv.cumulative_share, label=f"level {lv.level}")
    ax.set(xlabel="share of categories, largest first", ylabel="share of products", ylim=(0, 1.02),
           title="Cumulative share of products by category rank")
    if stats.levels:
        ax.legend()


def _duplicates(fig, stats: CatalogStats) -> None:
    ax = fig.add_subplot()
    d = stats.duplicates
    if d is None or not d.groups:
        ax.text(0.5, 0.5, "no duplicate images", ha="center", va="center")
        ax.set_axis_off()
        return
    ax.bar([str(k) for k in d.group_sizes], list(d.group_sizes.values()))
    ax.set(xlabel="copies of the same file (MD5)", ylabel="files",
           title=f"Duplicates: {d.duplicate_images} of {d.images} images; {d.across_products} files under "
                 f"several products")
