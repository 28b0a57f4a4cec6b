"""``tune``: choose the index settings on the shop's own photos, then build the index with them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from prodsearch.choices import TUNE_BUDGET_MINUTES, TUNE_CANDIDATES
from prodsearch.cli.app import (
    Progress,
    batch_option,
    cli,
    device_option,
    echo_json,
    index_option,
    json_option,
    quiet_option,
    shows_progress,
    wait_option,
    workers_option,
)
from prodsearch.cli.commands import format_build_report
from prodsearch.cli.reports import build_report_dict

if TYPE_CHECKING:
    from prodsearch.eval.tune import TuneReport


@cli.command()
@click.argument("catalog", type=click.Path())
@click.option("--val", "photos", required=True, type=click.Path(),
              help="Labelled photos of catalog products as customers take them (catalog formats: folder per SKU "
                   "or CSV), e.g. 1-3 photos for a few dozen SKUs: the settings are chosen on these.")
@index_option
@click.option("--budget", type=click.FloatRange(min=0), default=TUNE_BUDGET_MINUTES, show_default=True,
              metavar="MIN", help="Minutes training may take (0: no training). A run is stopped, and left out, as "
                                  "soon as its measured speed says it cannot finish in them.")
@click.option("--candidates", default=",".join(TUNE_CANDIDATES), show_default=True, metavar="NAMES",
              help="The settings to try, comma-separated, simplest first: plain (lite0 at 224), size160/192/288 "
                   "(lite0 at that input size), views6 (--views 6), ensemble (lite0+lite2@448), int8 (the best "
                   "fp32 one in int8), whole-224 (whole-network training at 224, 10 epochs, within --budget).")
@device_option
@batch_option
@workers_option
@wait_option
@quiet_option
@json_option
def tune(catalog, photos, index_dir, budget, candidates, device, batch_size, workers, wait, quiet, as_json):
    """Choose the index settings on the shop's own photos, and build the index in DIR with them.

    Every candidate embeds CATALOG and the --val photos and is scored on them (top-1: the photo's
    own SKU ranked first; a SKU scores its best catalog photo), with a 95% interval. With few
    photos two settings are often within noise of each other: the choice is the simplest whose
    top-1 is within one standard error (of the paired difference, on the same photos) of the best.
    The index's manifest records the choice and the table (prodsearch info shows it). Results are
    kept in DIR/tune/, so a run that was stopped continues where it stopped.

    \b
    Example:
        prodsearch tune shop/catalog/ --val shop/labelled/ --index shop/idx
        prodsearch tune shop/catalog/ --val shop/labelled/ --index shop/idx --budget 0 --candidates plain,size160
    """
    from prodsearch.eval.tune import record_tuning
    from prodsearch.eval.tune import tune as run_tune
    from prodsearch.indexer.build import build_index

    names = [name.strip() for name in candidates.split(",") if name.strip()]
    talk = shows_progress(quiet or as_json)
    announce = (lambda line: click.echo(f"tune: {line}", err=True)) if talk else None
    train_progress = None
    if talk:
        from prodsearch.cli.train import TrainProgress

        train_progress = TrainProgress(False)
    with Progress("Embedding", quiet or as_json) as progress:
        try:
            report = run_tune(catalog, photos, index_dir, candidates=names, budget_minutes=budget, device=device,
                              batch_size=batch_size, num_workers=workers, announce=announce, progress=progress,
                              train_progress=train_progress)
        finally:
            if train_progress is not None:
                train_progress.close()
    if announce:
        announce(f"building the index with {report.chosen.candidate.name}: {report.chosen.candidate.options()}")
    with Progress("Indexing", quiet or as_json) as progress:
        built = build_index(catalog, index_dir, **report.chosen.candidate.index_settings(), device=device,
                            batch_size=batch_size, num_workers=workers, progress=progress, wait=wait)
    record_tuning(index_dir, report, wait=wait)
    if as_json:
        echo_json(report.to_dict() | {"index": build_report_dict(built)})
    else:
        click.echo(format_tune_report(report))
        click.echo(format_build_report(built))


def format_tune_report(report: TuneReport) -> str:
    """The table of candidates on the shop's photos, the chosen one marked, and why it won."""
    rows = [r.row() for r in report.results]
    width = max(len("candidate"), *(len(r["name"]) for r in rows))
    lines = [f"Tuned on {report.photos} photos of {report.skus} SKUs (catalog: {report.catalog_photos} photos)",
             f"  {'candidate':<{width}}  top-1  95% interval  top-5  minutes  index options"]
    for r in rows:
        mark = "*" if r["name"] == report.chosen.candidate.name else " "
        if r["top1"] is None:
            lines.append(f"{mark} {r['name']:<{width}}  {'-':>5}  {'-':<12}  {'-':>5}  {r['minutes']:7.1f}  "
                         f"{r['options']}  ({r.get('skipped')})")
            continue
        interval = f"{r['low']:.3f}-{r['high']:.3f}"
        lines.append(f"{mark} {r['name']:<{width}}  {r['top1']:.3f}  {interval:<12}  {r['top5']:.3f}  "
                     f"{r['minutes']:7.1f}  {r['options']}")
    lines.append(f"Chosen: {report.chosen.candidate.name}: {report.reason}")
    lines += [f"warning: {w}" for w in report.warnings]
    return "\n".join(lines)
