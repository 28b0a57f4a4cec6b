"""``prodsearch demo``."""

from __future__ import annotations

import tempfile
from typing import TYPE_CHECKING

import click

from prodsearch.cli.app import AliasOption, Progress, cli, echo_json, json_option, quiet_option, runtime_options
from prodsearch.cli.commands import format_build_report, format_query_result
from prodsearch.cli.reports import demo_report_dict

if TYPE_CHECKING:
    from prodsearch.demo import DemoReport


@cli.command()
@click.option("--out", "--dir", "out", type=click.Path(file_okay=False), default=None, cls=AliasOption,
              hidden_aliases=("--dir",),
              help="Folder to write the generated shop and its index to, and keep [default: a temporary folder].")
@click.option("--skus", type=click.IntRange(min=2), default=48, show_default=True, help="Products to generate.")
@click.option("--snapshots", type=click.IntRange(min=1), default=3, show_default=True,
              help="Customer snapshots per product.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generated shop.")
@runtime_options
@quiet_option
@json_option
def demo(out, skus, snapshots, seed, runtime, device, precision, quiet, as_json):
    """Run the whole job on a generated shop: index, evaluate, query.

    Packaged goods (boxes, cartons, bottles, cans; look-alike variants that differ only in a
    small detail) are rendered as catalog photos and as customer snapshots (perspective, clutter,
    occlusion, blur, noise); the catalog is indexed with the ImageNet embedder and every snapshot
    is looked up.

    \b
    Example:
        prodsearch demo --out demo-shop
    """
    from prodsearch.demo import run_demo

    with tempfile.TemporaryDirectory(prefix="prodsearch-demo-") as tmp:
        with Progress("Working", quiet) as progress:
            report = run_demo(out or tmp, n_skus=skus, snapshots_per_sku=snapshots, seed=seed,
                              runtime=runtime, device=device, precision=precision, progress=progress)
        if as_json:
            echo_json(demo_report_dict(report, out))
        else:
            click.echo(format_demo_report(report, kept=out is not None))


def format_demo_report(report: DemoReport, kept: bool) -> str:
    data, ev = report.dataset, report.evaluation
    families = len({p.family for p in data.products})
    return "\n".join([
        f"Generated {len(data.products)} SKUs in {families} product lines "
        f"and {ev.n} customer snapshots in {data.catalog_dir.parent}",
        format_build_report(report.build),
        f"Customer snapshots: n={ev.n}  top-1 {ev.top1:.3f}  top-5 {ev.top5:.3f}",
        f"\nExample query (true SKU: {report.example_truth}):",
        format_query_result(report.example),
        f"\nDone in {report.seconds:.1f}s." + ("" if kept else " (temporary files removed; keep them with --out)"),
    ])
