"""``calibrate``: set the index's "not in catalog" rule from labelled photos."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from prodsearch.cli.app import (Progress, batch_option, cli, echo_json, index_option, json_option, query_model_option,
                                quiet_option, runtime_options, search_options, wait_option, workers_option)
from prodsearch.cli.commands import open_index, skipped_lines

if TYPE_CHECKING:
    from prodsearch.eval.calibrate import Calibration


@cli.command()
@click.argument("queries", type=click.Path())
@index_option
@click.option("--unknown", type=click.Path(), default=None,
              help="Photos of products the shop does not sell (catalog formats; labels are not used): scored as "
                   "unknown products as they are. Needed when the embedder was trained on the shop's SKUs.")
@click.option("--far", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05, show_default=True,
              help="False-accept rate to reach: the share of photos of products the shop does not sell that may "
                   "still be named as a SKU.")
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True,
              help="Groups the SKUs are split into; each group plays unknown products once.")
@click.option("--dry-run", is_flag=True, help="Measure and print, but store nothing in the index.")
@query_model_option
@batch_option
@runtime_options
@workers_option
@wait_option
@quiet_option
@json_option
@search_options
def calibrate(queries, index_dir, unknown, far, folds, dry_run, model, batch_size, runtime, device, precision, workers,
              wait, quiet, as_json, nprobe, ef_search):
    """Learn when to answer "not in catalog" from labelled photos of SKUs in the index.

    QUERIES has the catalog formats (a folder per SKU, or a CSV with image,sku), photos like the
    ones customers will send: not the catalog photos themselves. Leaving a few SKUs out of the
    search at a time, it measures how products the shop does not sell score, compares the rules
    (top-1 similarity, margin and distance ratio to the best other SKU), picks the one that keeps
    the most photos right at the asked false-accept rate, and stores it in the index: query,
    eval and serve apply it from then on (--threshold overrides, --no-reject turns it off).
    Photos of SKUs the index does not hold count as unknown products as they are.

    An embedder trained on the shop's own SKUs has learnt to tell exactly those apart, so leaving
    them out understates how close a product it never saw comes: give photos of products the
    shop does not sell with --unknown (a few hundred; products like the shop's, not the same).

    \b
    Example:
        prodsearch calibrate shop/val-photos/ --index shop/idx
        prodsearch calibrate shop/val-photos/ --index shop/idx --unknown other-products/ --far 0.01 --json
    """
    from prodsearch.eval.calibrate import calibrate as run
    from prodsearch.indexer.lifecycle import set_rejection
    from prodsearch.indexer.writer import IndexWriter

    if not dry_run:
        IndexWriter(index_dir, "calibrate", wait=wait)  # a read-only index fails before the model loads
    product_index = open_index(index_dir, model, runtime, device, precision, nprobe, ef_search)
    with Progress("Calibrating", quiet) as progress:
        result = run(queries, product_index, unknown=unknown, far=far, folds=folds, batch_size=batch_size,
                     num_workers=workers, progress=progress)
    generation = None if dry_run else set_rejection(index_dir, result.reject_rule(), wait=wait)
    if as_json:
        echo_json({**result.to_dict(), "stored": not dry_run, "stored_generation": generation})
    else:
        click.echo(format_calibration(result, index_dir, generation))


def format_calibration(result: Calibration, index_dir: str, generation: int | None) -> str:
    lines = [f"Calibrated on {result.photos} photos: {result.known} of {result.skus} SKUs in the index, scored as known "
             f"and, with their SKU left out ({result.folds} folds), as unknown; {result.others} of other products",
             f"  closed-set top-1 of the known photos: {result.top1:.4f}",
             f"  at most {result.far:.1%} of unknown products accepted:",
             "    rule    threshold  false accepts  known right  known rejected  AUROC"]
    for r in result.rules:
        mark = "*" if r is result.chosen else " "
        lines.append(f"  {mark} {r.rule:<7} {r.threshold:>9.4f}  {r.false_accept_rate:>13.4f}  {r.known_accuracy:>11.4f}"
                     f"  {r.known_rejected:>14.4f}  {r.auroc:.4f}")
    c = result.chosen
    where = f"stored in {index_dir} (generation {generation})" if generation is not None else "not stored (--dry-run)"
    lines.append(f"  rule: {c.rule} >= {c.threshold:.4f}, {where}")
    if result.skipped:
        lines += skipped_lines(result.skipped)
    return "\n".join(lines)
