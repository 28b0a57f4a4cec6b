"""Dataset statistics of a catalog: what the Cdiscount paper's Table 3 and Figures 2-4 show.

- images per product (Table 3);
- products per category at each level of the tree, in log-scale bins (Figure 2);
- the cumulative share of products held by the largest categories (Figure 3);
- duplicate images (same MD5) across the catalog and across categories (Figure 4).

A product is the manifest's ``product`` where given, else the SKU. Everything here is plain
counting over a :class:`Listing`; :mod:`prodsearch.eval.plots` draws it.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

from prodsearch.catalog.listing import Item, Skipped


@dataclass
class LevelStats:
    level: int
    categories: int
    products_per_category_bins: dict[str, int]  # "1", "2-3", "4-7", ...: categories with that many products
    cumulative_share: list[float]  # share of products in the k largest categories, k = 1..categories
    largest: list[tuple[str, int]]  # the 5 largest categories and their product counts

    def share_of_top(self, fraction: float) -> float:
        """Share of products held by the largest ``fraction`` of categories."""
        if not self.cumulative_share:
            return 0.0
        k = max(1, math.ceil(fraction * len(self.cumulative_share)))
        return self.cumulative_share[k - 1]


@dataclass
class DuplicateStats:
    images: int
    distinct: int  # distinct MD5s
    duplicate_images: int  # images whose bytes also appear elsewhere in the catalog
    groups: int  # MD5s seen more than once
    group_sizes: dict[int, int]  # copies -> number of MD5s with that many copies
    across_products: int  # groups spanning more than one product
    across_categories: dict[int, int]  # level -> groups spanning more than one category at that level


@dataclass
class CatalogStats:
    source: str
    images: int
    products: int
    skus: int
    images_per_product: dict[int, int]  # images -> products with that many
    levels: list[LevelStats] = field(default_factory=list)
    duplicates: DuplicateStats | None = None
    skipped: list[Skipped] = field(default_factory=list)  # files left out of the counts, with why

    def to_dict(self) -> dict:
        d = asdict(self)
        for level, stats in zip(d["levels"], self.levels):
            level["top_10pct_share"] = stats.share_of_top(0.1)
        return d


def log2_bin(count: int) -> str:
    """The power-of-two bin a count falls in: 1, 2-3, 4-7, 8-15, ..."""
    low = 1 << (count.bit_length() - 1)
    return str(low) if low == 1 else f"{low}-{2 * low - 1}"


def category_prefix(category: str | None, level: int) -> str | None:
    parts = [p for p in (category or "").split("/") if p]
    return "/".join(parts[:level]) if len(parts) >= level else None


def level_stats(product_categories: dict[str, str | None], level: int) -> LevelStats:
    counts = Counter(c for c in (category_prefix(cat, level) for cat in product_categories.values()) if c)
    sizes = sorted(counts.values(), reverse=True)
    total = sum(sizes)
    running, cumulative = 0, []
    for size in sizes:
        running += size
        cumulative.append(running / total)
    bins = Counter(log2_bin(n) for n in sizes)
    ordered = dict(sorted(bins.items(), key=lambda kv: int(kv[0].split("-")[0])))
    return LevelStats(level, len(counts), ordered, cumulative, counts.most_common(5))


def duplicate_stats(md5s: Sequence[str], products: Sequence[str], categories: Sequence[str | None],
                    depth: int) -> DuplicateStats:
    copies: dict[str, list[int]] = defaultdict(list)
    for i, digest in enumerate(md5s):
        copies[digest].append(i)
    groups = [rows for rows in copies.values() if len(rows) > 1]
    across = {level: sum(len({category_prefix(categories[i], level) for i in rows}) > 1 for rows in groups)
              for level in range(1, depth + 1)}
    return DuplicateStats(
        images=len(md5s), distinct=len(copies), duplicate_images=sum(len(rows) for rows in groups),
        groups=len(groups), group_sizes=dict(sorted(Counter(len(rows) for rows in groups).items())),
        across_products=sum(len({products[i] for i in rows}) > 1 for rows in groups),
        across_categories=across,
    )


def catalog_stats(items: Sequence[Item], source: str, md5: Callable[[Item], str] | None = None) -> CatalogStats:
    """Count everything above for ``items``; ``md5(item)`` (a file hash) enables the duplicate
    analysis."""
    product_of = [it.product or it.sku for it in items]
    product_categories = {p: it.category for p, it in zip(product_of, items)}
    per_product = Counter(product_of)
    depth = max((len([p for p in c.split("/") if p]) for c in product_categories.values() if c), default=0)
    stats = CatalogStats(
        source=source, images=len(items), products=len(per_product), skus=len({it.sku for it in items}),
        images_per_product=dict(sorted(Counter(per_product.values()).items())),
        levels=[level_stats(product_categories, level) for level in range(1, depth + 1)],
    )
    if md5 is not None:
        stats.duplicates = duplicate_stats([md5(it) for it in items], product_of, [it.category for it in items], depth)
    return stats
