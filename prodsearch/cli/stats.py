"""``stats``: the Cdiscount paper's dataset figures for any catalog."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import click

from prodsearch.cli.app import cli
from prodsearch.eval.plots import write_plots
from prodsearch.eval.stats import CatalogStats, catalog_stats
from prodsearch.indexer.ingest import file_md5
from prodsearch.indexer.sources import read_listing


@cli.command()
@click.argument("catalog", type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for stats.json and the plots.")
@click.option("--no-md5", is_flag=True, help="Skip hashing every file (no duplicate analysis).")
def stats(catalog, out, no_md5):
    """Describe a catalog: images per product, products per category at each level of the
    category tree, how concentrated the categories are, and duplicate files (MD5).

    Writes OUT/stats.json and four PNG plots; prints the headline numbers.

    \b
    Example:
        prodsearch stats gs/catalog.csv --out gs/stats
    """
    listing = read_listing(catalog)
    result = catalog_stats(listing.items, str(listing.source), None if no_md5 else (lambda it: file_md5(it.path)))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "stats.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    plots = write_plots(result, out)
    click.echo(format_stats(result))
    click.echo(f"Wrote {out / 'stats.json'} and {len(plots)} plots: {', '.join(p.name for p in plots)}")


def format_stats(s: CatalogStats) -> str:
    per_product = [n for n, count in s.images_per_product.items() for _ in range(count)]
    lines = [f"{s.images} images of {s.products} products ({s.skus} SKUs)",
             f"images per product: min {min(per_product)}, median {statistics.median(per_product):g}, "
             f"mean {s.images / s.products:.2f}, max {max(per_product)}"]
    few = {n: c for n, c in s.images_per_product.items() if n <= 4}
    if few:
        lines.append("  products with " + ", ".join(f"{n} image{'s' if n > 1 else ''}: {c}" for n, c in few.items()))
    for lv in s.levels:
        largest = ", ".join(f"{name} {n}" for name, n in lv.largest[:3])
        lines.append(f"category level {lv.level}: {lv.categories} categories; the largest 10% hold "
                     f"{lv.share_of_top(0.1):.0%} of products; largest: {largest}")
    d = s.duplicates
    if d is not None and not d.groups:
        lines.append(f"duplicates (MD5): none among {d.images} images")
    elif d is not None:
        spans = ", ".join(f"level {lv} {n}" for lv, n in d.across_categories.items())
        lines.append(f"duplicates (MD5): {d.duplicate_images} of {d.images} images are copies of {d.groups} files; "
                     f"{d.across_products} files under several products"
                     + (f"; under several categories: {spans}" if spans else ""))
    return "\n".join(lines)
