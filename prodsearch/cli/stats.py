"""``stats``: the Cdiscount paper's dataset figures for any catalog."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import click

from prodsearch.cli.app import Progress, cli, echo_json, json_option, quiet_option
from prodsearch.catalog.listing import Item, Listing, Skipped, read_listing
from prodsearch.cli.commands import skipped_lines
from prodsearch.cli.reports import stats_dict

if TYPE_CHECKING:
    from prodsearch.eval.stats import CatalogStats


@cli.command()
@click.argument("catalog", type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder to write stats.json and the plots to (created if missing).")
@click.option("--no-md5", is_flag=True, help="Skip hashing every file (no duplicate analysis).")
@quiet_option
@json_option
def stats(catalog, out, no_md5, quiet, as_json):
    """Describe a catalog: images per product, products per category at each level of the
    category tree, how concentrated the categories are, and duplicate files (MD5).

    Writes OUT/stats.json and four PNG plots; prints the headline numbers.

    \b
    Example:
        prodsearch stats gs/catalog.csv --out gs/stats
    """
    from prodsearch.eval.plots import write_plots
    from prodsearch.eval.stats import catalog_stats

    listing = read_listing(catalog)
    if no_md5:
        items, md5s, skipped = listing.items, None, list(listing.skipped)
    else:
        with Progress("Hashing", quiet) as progress:
            items, md5s, skipped = readable_items(listing, progress)
    result = catalog_stats(items, str(listing.source), None if md5s is None else md5s.__getitem__)
    result.skipped = skipped
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "stats.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    plots = write_plots(result, out)
    if as_json:
        echo_json(stats_dict(result, out, plots))
    else:
        click.echo(format_stats(result))
        click.echo(f"Wrote {out / 'stats.json'} and {len(plots)} plots: {', '.join(p.name for p in plots)}")


def readable_items(listing: Listing, progress: Callable[[int, int], None] | None = None
                   ) -> tuple[list[Item], dict[Item, str], list[Skipped]]:
    """The listing's items that can be hashed, their MD5s, and every file left out with why: the
    statistics describe what an index of the catalog would hold, so unreadable files do not count.
    ``progress`` gets ``(files hashed, files)``: hashing a large catalog reads every byte of it."""
    from prodsearch.indexer.ingest import file_info, nothing_readable

    items, md5s, skipped = [], {}, list(listing.skipped)
    for done, item in enumerate(listing.items, start=1):
        info = file_info(item)
        if progress is not None:
            progress(done, len(listing.items))
        if isinstance(info, Skipped):
            skipped.append(info)
        else:
            items.append(item)
            md5s[item] = info.md5
    if not items:
        raise nothing_readable(listing.source, len(listing.items), skipped)
    return items, md5s, skipped


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
    lines += skipped_lines(s.skipped, indent="")
    return "\n".join(lines)
