"""``calibrate``: set the index's "not in catalog" rule from labelled photos."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from prodsearch.cli.app import (Progress, batch_option, cli, echo_json, index_option, json_option, query_model_option,
                                quiet_option, runtime_options, search_options, wait_option, workers_option)
from prodsearch.cli.commands import open_index, skipped_lines
from prodsearch.choices import MAX_KNOWN_REJECTED

if TYPE_CHECKING:
    from prodsearch.eval.calibrate import Calibration


@cli.command()
@click.argument("queries", type=click.Path(), required=False)
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
@click.option("--force", is_flag=True,
              help=f"Store the rule even when it rejects more than {MAX_KNOWN_REJECTED:.0%} of the photos of the "
                   "shop's own products.")
@click.option("--clear", is_flag=True, help="Remove the stored rule (no QUERIES): answers name the nearest SKU again.")
@query_model_option
@batch_option
@runtime_options
@workers_option
@wait_option
@quiet_option
@json_option
@search_options
def calibrate(queries, index_dir, unknown, far, folds, dry_run, force, clear, model, batch_size, runtime, device,
              precision, workers, wait, quiet, as_json, nprobe, ef_search):
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

    A rule that would reject most of the shop's own photos (the embedder does not tell its
    products apart: train one first) is not stored without --force. --clear removes the stored
    rule (add, update and remove keep it).

    \b
    Example:
        prodsearch calibrate shop/val-photos/ --index shop/idx
        prodsearch calibrate shop/val-photos/ --index shop/idx --unknown other-products/ --far 0.01 --json
        prodsearch calibrate --clear --index shop/idx
    """
    if clear:
        return clear_rule(queries, index_dir, wait, as_json)
    if queries is None:
        raise click.UsageError("give QUERIES (labelled photos to calibrate on), or --clear to remove the stored rule")
    from prodsearch.eval.calibrate import CalibrationError
    from prodsearch.eval.calibrate import calibrate as run
    from prodsearch.indexer.lifecycle import set_rejection
    from prodsearch.indexer.writer import IndexWriter

    if not dry_run:
        IndexWriter(index_dir, "calibrate", wait=wait)  # a read-only index fails before the model loads
    product_index = open_index(index_dir, model, runtime, device, precision, nprobe, ef_search)
    with Progress("Calibrating", quiet) as progress:
        result = run(queries, product_index, unknown=unknown, far=far, folds=folds, batch_size=batch_size,
                     num_workers=workers, progress=progress)
    if result.rejects_most and not (dry_run or force):
        raise CalibrationError(f"{result.too_strict()}; nothing was stored: see the rates with --dry-run, or store "
                               f"it anyway with --force (undo: prodsearch calibrate --clear --index {index_dir})")
    generation = None if dry_run else set_rejection(index_dir, result.reject_rule(), wait=wait)
    if as_json:
        echo_json({**result.to_dict(), "stored": not dry_run, "stored_generation": generation})
    else:
        click.echo(format_calibration(result, index_dir, generation))


def clear_rule(queries: str | None, index_dir: str, wait: float, as_json: bool) -> None:
    """``calibrate --clear``: the stored rule removed, and what that did."""
    if queries is not None:
        raise click.UsageError("--clear removes the stored rule and calibrates nothing: give no QUERIES with it")
    from prodsearch.indexer.lifecycle import clear_rejection

    generation = clear_rejection(index_dir, wait=wait)
    if as_json:
        echo_json({"index_dir": str(index_dir), "cleared": generation is not None, "stored_generation": generation})
    elif generation is None:
        click.echo(f'No "not in catalog" rule is stored in {index_dir}; nothing was changed')
    else:
        click.echo(f'Removed the "not in catalog" rule from {index_dir} (generation {generation}); '
                   "answers name the nearest SKU again")


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
    if result.rejects_most:
        lines.append(f"  warning: it rejects {c.known_rejected:.0%} of the shop's own photos; "
                     + (f"undo: prodsearch calibrate --clear --index {index_dir}" if generation is not None
                        else "stored, it would answer \"not in catalog\" to most customers"))
    if result.skipped:
        lines += skipped_lines(result.skipped)
    return "\n".join(lines)
