"""``prodsearch demo``."""

from __future__ import annotations

import tempfile

import click

from prodsearch.cli.app import Progress, cli, device_option, silent_option
from prodsearch.cli.commands import format_build_report, format_query_result


@cli.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=None,
              help="Keep the generated shop and its index here [default: a temporary folder].")
@click.option("--skus", type=click.IntRange(min=2), default=48, show_default=True, help="Products to generate.")
@click.option("--snapshots", type=click.IntRange(min=1), default=3, show_default=True,
              help="Customer snapshots per product.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generated shop.")
@device_option
@silent_option
def demo(directory, skus, snapshots, seed, device, silent):
    """Run the whole job on a generated shop: index, evaluate, query.

    Packaged goods (boxes, cartons, bottles, cans; look-alike variants that differ only in a
    small detail) are rendered as catalog photos and as customer snapshots (perspective, clutter,
    occlusion, blur, noise); the catalog is indexed with the ImageNet embedder and every snapshot
    is looked up.

    \b
    Example:
        prodsearch demo --dir demo-shop
    """
    from prodsearch.demo import run_demo

    with tempfile.TemporaryDirectory(prefix="prodsearch-demo-") as tmp:
        with Progress("Working", silent) as progress:
            report = run_demo(directory or tmp, n_skus=skus, snapshots_per_sku=snapshots, seed=seed,
                              device=device, progress=progress)
        data = report.dataset
        families = len({p.family for p in data.products})
        click.echo(f"Generated {len(data.products)} SKUs in {families} product lines "
                   f"and {report.evaluation.n} customer snapshots in {data.catalog_dir.parent}")
        click.echo(format_build_report(report.build))
        ev = report.evaluation
        click.echo(f"Customer snapshots: n={ev.n}  top-1 {ev.top1:.3f}  top-5 {ev.top5:.3f}")
        click.echo(f"\nExample query (true SKU: {report.example_truth}):")
        click.echo(format_query_result(report.example))
        click.echo(f"\nDone in {report.seconds:.1f}s." + ("" if directory else " (temporary files removed; keep them with --dir)"))
