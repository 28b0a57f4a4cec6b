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
    from prodsearch.indexer.product_index import QueryResult

MODELS = ("ImageNet", "trained")  # the column headings of the before/after comparison


@cli.command()
@click.option("--out", "--dir", "out", type=click.Path(file_okay=False), default=None, cls=AliasOption,
              hidden_aliases=("--dir",),
              help="Folder to write the generated shop, its indexes and the trained model to, and keep "
                   "[default: a temporary folder].")
@click.option("--skus", type=click.IntRange(min=2), default=48, show_default=True, help="Products to generate.")
@click.option("--snapshots", type=click.IntRange(min=1), default=3, show_default=True,
              help="Customer snapshots per product.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generated shop.")
@click.option("--train/--no-train", "train", default=True, show_default=True,
              help="Train the embedder and compare it with the ImageNet one (--no-train: ImageNet only).")
@click.option("--train-snapshots", type=click.IntRange(min=1), default=6, show_default=True,
              help="Training snapshots per product (never the evaluation ones).")
@runtime_options
@quiet_option
@json_option
def demo(out, skus, snapshots, seed, train, train_snapshots, runtime, device, precision, quiet, as_json):
    """Run the whole job on a generated shop: index, evaluate, query, train, and again.

    Packaged goods (boxes, cartons, bottles, cans; look-alike variants that differ only in a
    small detail) are rendered as catalog photos and as customer snapshots (perspective, clutter,
    occlusion, blur, noise); the catalog is indexed with the ImageNet embedder and every snapshot
    is looked up. Then the embedder's head is trained on the catalog photos and other snapshots of
    the same products, and the catalog is indexed and the snapshots looked up again with it:
    before and after, side by side.

    \b
    Example:
        prodsearch demo --out demo-shop
    """
    from prodsearch.demo import run_demo

    with tempfile.TemporaryDirectory(prefix="prodsearch-demo-") as tmp:
        with Progress("Working", quiet) as progress:
            report = run_demo(out or tmp, n_skus=skus, snapshots_per_sku=snapshots, seed=seed, train=train,
                              train_snapshots_per_sku=train_snapshots,
                              runtime=runtime, device=device, precision=precision, progress=progress)
        if as_json:
            echo_json(demo_report_dict(report, out))
        else:
            click.echo(format_demo_report(report, kept=out is not None))


def format_demo_report(report: DemoReport, kept: bool) -> str:
    """What was generated and indexed, then (trained) how training went and both models side by side."""
    data, ev, trained = report.dataset, report.evaluation, report.trained
    families = len({p.family for p in data.products})
    snapshots = (f", {ev.n} customer snapshots to evaluate and {trained.train_images - len(data.products)} to "
                 f"train on" if trained else f" and {ev.n} customer snapshots")
    lines = [f"Generated {len(data.products)} SKUs in {families} product lines{snapshots} in {data.catalog_dir.parent}",
             format_build_report(report.build)]
    if trained is None:
        lines += [f"Customer snapshots: n={ev.n}  top-1 {ev.top1:.3f}  top-5 {ev.top5:.3f}",
                  f"\nExample query (true SKU: {report.example_truth}):", format_query_result(report.example)]
    else:
        lines += [f"Trained the embedding head on {trained.train_images} photos (catalog photos and training "
                  f"snapshots), {trained.config.epochs} epochs, in {trained.train_seconds:.1f}s: "
                  f"{trained.training.model_path}",
                  format_build_report(trained.build),
                  "", *format_comparison(report),
                  f"\nExample query (true SKU: {report.example_truth}):",
                  *format_side_by_side(report.example, trained.example)]
    done = f"\nDone in {report.seconds:.1f}s."
    return "\n".join(lines + [done + ("" if kept else " (temporary files removed; keep them with --out)")])


def format_comparison(report: DemoReport) -> list[str]:
    """Both models' evaluation on the same snapshots, a column each."""
    before, after = report.evaluation, report.trained.evaluation
    rows = [("top-1", f"{before.top1:.3f}", f"{after.top1:.3f}"),
            ("top-5", f"{before.top5:.3f}", f"{after.top5:.3f}"),
            ("speed (images/s)", f"{before.images_per_second:.1f}", f"{after.images_per_second:.1f}")]
    head = f"Customer snapshots (n={before.n})"
    width = max(len(head), *(len(name) + 2 for name, *_ in rows))
    return [f"{head:<{width}}  {MODELS[0]:>9}  {MODELS[1]:>9}"] + [
        f"  {name:<{width - 2}}  {a:>9}  {b:>9}" for name, a, b in rows]


def format_side_by_side(before: QueryResult, after: QueryResult) -> list[str]:
    """The example query's ranked SKUs, the ImageNet model's beside the trained one's."""
    if before.error or after.error:
        return [format_query_result(before), format_query_result(after)]
    width = max((len(m.sku) for m in before.matches + after.matches), default=0)
    column = width + 7
    lines = [before.path, f"      {MODELS[0]:<{column}}    {MODELS[1]}"]
    for rank, (a, b) in enumerate(zip(before.matches, after.matches), start=1):
        lines.append(f"  {rank}.  {a.sku:<{width}}  {a.score:.3f}    {b.sku:<{width}}  {b.score:.3f}")
    return lines
