"""``import``: a public dataset's own layout as a prodsearch CSV manifest."""

from __future__ import annotations

import click

from prodsearch.cli.app import Progress, cli, echo_json, json_option, quiet_option
from prodsearch.cli.commands import skipped_lines
from prodsearch.cli.reports import import_report_dict
from prodsearch.catalog.importers import FORMATS, ImportReport, import_catalog


@cli.command(name="import")
@click.argument("fmt", metavar="FORMAT", type=click.Choice(sorted(FORMATS)))
@click.argument("source", type=click.Path())
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="The CSV manifest file to write (image,sku,name,category,product); cdiscount pictures "
                   "are extracted beside it.")
@click.option("--split", "splits", multiple=True,
              help="A split to import (repeatable) [default: products10k train; cdiscount train; "
                   "grocery-store iconic and train].")
@quiet_option
@json_option
def import_(fmt, source, out, splits, quiet, as_json):
    """Write a manifest for a dataset in its published layout.

    \b
    products10k:    train/, test/, train.csv (name,class,group), test_kaggletest.csv
    cdiscount:      train.bson or train_example.bson (+ test.bson), category_names.csv;
                    pictures are extracted to OUT's folder, OUT-images/<category_id>/
    grocery-store:  classes.csv, train.txt, val.txt, test.txt (splits iconic/train/val/test)

    The manifest is a catalog like any other for index, train, eval and stats.

    \b
    Example:
        prodsearch import grocery-store ../shared/datasets/grocery-store --out gs/catalog.csv
        prodsearch import grocery-store ../shared/datasets/grocery-store --split test --out gs/test.csv
    """
    with Progress("Writing rows", quiet) as progress:
        report = import_catalog(fmt, source, out, splits=splits, progress=progress)
    if as_json:
        echo_json(import_report_dict(report))
    else:
        click.echo(format_import_report(report))


def format_import_report(report: ImportReport) -> str:
    products = f", {report.products} products" if report.products != report.skus else ""
    lines = [f"Wrote {report.manifest}: {report.images} images of {report.skus} SKUs{products}, "
             f"{report.categories} categories ({report.seconds:.1f}s)"]
    return "\n".join(lines + skipped_lines(report.skipped))
