"""``add``, ``remove``, ``update`` and ``info``: keep an index in step with a changing catalog."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import click

from prodsearch.choices import CHUNK_PHOTOS
from prodsearch.cli.app import (Progress, batch_option, cli, echo_json, index_option, json_option, query_model_option,
                                quiet_option, runtime_options, speaks_for_run, wait_option, workers_option)
from prodsearch.cli.commands import MAX_LISTED, skipped_lines
from prodsearch.cli.reports import change_report_dict
from prodsearch.errors import ProdsearchError

if TYPE_CHECKING:
    from prodsearch.indexer.info import IndexInfo
    from prodsearch.indexer.lifecycle import ChangeReport

# prodsearch.indexer.lifecycle.MASS_REMOVAL_SHARE, which update's help states without importing the indexer.
MASS_REMOVAL_SHARE = 0.5


def catalog_operation(name: str) -> Callable[..., ChangeReport]:
    """The API function behind ``add`` or ``update``, imported only once the command runs."""
    from prodsearch.indexer.lifecycle import add_to_index, update_index

    return {"add": add_to_index, "update": update_index}[name]


def catalog_command(name: str, help_text: str, *extra_options):
    """``add`` and ``update`` share their options and output; ``extra_options`` are one command's own."""

    @cli.command(name=name, help=help_text)
    @click.argument("catalog", type=click.Path())
    @index_option
    @query_model_option
    @batch_option
    @runtime_options
    @workers_option
    @click.option("--chunk-size", type=click.IntRange(min=1), default=CHUNK_PHOTOS, show_default=True, metavar="N",
                  help="New photos are embedded and committed N at a time, each chunk a generation: memory holds one "
                       "chunk, and a run that is stopped keeps what it committed (the next run skips it).")
    @wait_option
    @quiet_option
    @json_option
    def command(catalog, index_dir, model, batch_size, runtime, device, precision, workers, chunk_size, wait, quiet,
                as_json, **extra):
        operation = catalog_operation(name)
        with Progress("Embedding", quiet or not speaks_for_run()) as progress:
            report = operation(catalog, index_dir, model=model, batch_size=batch_size, runtime=runtime, device=device,
                               precision=precision, num_workers=workers, progress=progress, wait=wait,
                               chunk_size=chunk_size, **extra)
        if report is None:  # a helper process of a torchrun run: rank 0 reports
            return
        if as_json:
            echo_json(change_report_dict(report))
        else:
            click.echo(format_change_report(report, name))

    for option in extra_options:
        command = option(command)
    return command


catalog_command("add", """Add the new SKUs and new photos of CATALOG to an index.

    Only photos the index does not hold (by SKU and MD5) are embedded; running the same add again
    changes nothing. Nothing is removed: use 'update' to mirror a catalog exactly.

    \b
    Example:
        prodsearch add shop/new-arrivals/ --index shop/idx
    """)

catalog_command("update", f"""Make an index match CATALOG exactly.

    Adds new photos, removes photos that disappeared from the catalog, re-embeds files whose content
    changed, and refreshes product names and categories. A photo whose file is still there but
    cannot be read keeps its place in the index (it is listed as skipped). An update that would
    remove more than {MASS_REMOVAL_SHARE:.0%} of the index is refused unless --allow-mass-removal.

    \b
    Example:
        prodsearch update shop/catalog.csv --index shop/idx
    """, click.option("--allow-mass-removal", is_flag=True,
                      help=f"Allow removing more than {MASS_REMOVAL_SHARE:.0%} of the index in one update."))


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def human_size(size: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def format_change_report(report: ChangeReport, verb: str) -> str:
    if report.generation is None:
        holds = "these" if verb == "add" else "exactly the catalog's"
        head = f"Nothing to {verb}: {report.index_dir} already holds {holds} {plural(report.unchanged, 'image')}"
    elif verb == "add":
        head = f"Added {plural(report.added, 'image')} to {report.index_dir} ({report.unchanged} already there)"
    else:
        head = (f"Updated {report.index_dir}: {plural(report.added, 'image')} added, {report.removed} removed, "
                f"{report.changed} changed (re-embedded), {report.unchanged} unchanged")
    lines = [head]
    if report.new_skus:
        lines.append(f"  new SKUs: {len(report.new_skus)} ({', '.join(report.new_skus[:MAX_LISTED])}"
                     f"{', ...' if len(report.new_skus) > MAX_LISTED else ''})")
    if report.removed_skus:
        lines.append(f"  removed SKUs: {len(report.removed_skus)} ({', '.join(report.removed_skus[:MAX_LISTED])})")
    if report.duplicates:
        lines.append(f"  duplicates: {len(report.duplicates)} (identical files within a SKU, stored once)")
    lines += skipped_lines(report.skipped)
    if report.kept_unreadable:
        lines.append(f"  kept: {plural(report.kept_unreadable, 'image')} whose files cannot be read now "
                     "(see skipped; fix or delete the files)")
    if report.embedded:
        lines.append(f"  speed: {report.images_per_second:.1f} images/s ({report.embed_seconds:.1f}s embedding, "
                     f"{report.seconds:.1f}s total)")
    return "\n".join(lines)


@cli.command()
@index_option
@click.option("--sku", "skus", multiple=True, help="A SKU to remove with all its photos (repeatable).")
@click.option("--image", "images", multiple=True, type=int, help="An image id to remove (repeatable).")
@wait_option
@json_option
def remove(index_dir, skus, images, wait, as_json):
    """Remove products (--sku) or single photos (--image) from an index.

    Image ids are shown by 'prodsearch query --json'. Unknown SKUs or ids are an error and then
    nothing is removed.

    \b
    Example:
        prodsearch remove --index shop/idx --sku milk-3pct --sku milk-1pct
    """
    from prodsearch.indexer.lifecycle import remove_from_index

    report = remove_from_index(index_dir, skus=skus, image_ids=images, wait=wait)
    if as_json:
        echo_json(change_report_dict(report))
    else:
        click.echo(format_remove_report(report))


def format_remove_report(report: ChangeReport) -> str:
    gone = f"; SKUs gone: {', '.join(report.removed_skus)}" if report.removed_skus else ""
    return f"Removed {plural(report.removed, 'image')} from {report.index_dir}{gone}"


@cli.command()
@index_option
@click.option("--repair", is_flag=True,
              help="First bring the vector store level with catalog.db (the truth): every Milvus row compared and "
                   "rewritten, or a fresh FAISS snapshot; for a writer killed part-way or a store changed by hand.")
@wait_option
@json_option
def info(index_dir, repair, wait, as_json):
    """Describe an index: SKUs, images, vectors, model, index type, size on disk, consistency.

    Exits with status 1 if the catalog and the vector index disagree.

    \b
    Example:
        prodsearch info --index shop/idx --json
        prodsearch info --index shop/idx --repair
    """
    from prodsearch.indexer.info import index_info, repair_index

    if repair:
        done = repair_index(index_dir, wait=wait)
        if not as_json:
            click.echo(f"repaired:   {done}")
    result = index_info(index_dir)
    if as_json:
        echo_json(result.to_dict())
    else:
        click.echo(format_info(result))
    if not result.consistent:
        raise ProdsearchError(f"{index_dir} is inconsistent: {'; '.join(result.problems)}; repair the vector store "
                              f"with: prodsearch info --index {index_dir} --repair, or rebuild the index: prodsearch "
                              f"index CATALOG --index {index_dir}")


def format_rejection(rule: dict | None) -> str:
    """The stored "not in catalog" rule, with what calibration measured."""
    if rule is None:
        return ("none: every photo is answered with its nearest SKU (prodsearch calibrate QUERIES --index DIR "
                "sets a rule)")
    c = rule.get("calibration") or {}
    line = f"{rule['rule']} >= {rule['threshold']:.4f}"
    if c:
        line += (f" (calibrated at generation {c.get('generation')} on {c.get('photos')} photos of {c.get('skus')} "
                 f"SKUs: {c.get('false_accept_rate', 0):.1%} of unknown products accepted, "
                 f"{c.get('known_accuracy', 0):.1%} of known photos right)")
    return line


def format_precision_check(check: dict | None) -> str:
    """Whether int8 kept the shop's answers when the index was built, and what it embeds with."""
    from prodsearch.indexer.precision_check import PrecisionCheck

    if check is None:
        return ("not measured (built with --precision fp32, where auto takes fp32: a CPU without VNNI or AMX, or "
                "before prodsearch measured it)")
    return PrecisionCheck.from_dict(check).describe()


def format_tuning(tuning: dict | None) -> str:
    """What ``prodsearch tune`` chose, on how many photos, against the plain setting, in one line;
    the whole table is in ``--json``."""
    if tuning is None:
        return "none (prodsearch tune CATALOG --val PHOTOS --index DIR chooses the settings on the shop's photos)"
    scored = {c["name"]: c for c in tuning["candidates"] if c.get("top1") is not None}
    chosen, plain = scored.get(tuning["chosen"]), scored.get("plain")
    line = f"{tuning['chosen']} ({tuning.get('options', '')})"
    if chosen is not None:
        line += f": top-1 {chosen['top1']:.3f} (95% {chosen['low']:.3f}-{chosen['high']:.3f}) on {tuning['photos']} photos"
    return line + (f"; plain {plain['top1']:.3f}" if plain is not None and tuning["chosen"] != "plain" else "")


def format_views(views: int) -> str:
    """What ``index --views`` set, for people: the views and what they cost."""
    if views == 1:
        return "1 (each photo embedded as itself)"
    return (f"{views} (each photo, catalog and query, embedded as the mean of itself and {views - 1} crops: "
            f"{views}x the embedding time, one vector per photo)")


def format_info(info: IndexInfo) -> str:
    from prodsearch.indexer.leftovers import describe as describe_leftovers

    lines = [
        f"index:      {info.index_dir}",
        f"model:      {info.model} ({info.weights}), {info.embed_dim}-d, {info.input_size} px",
        f"runtime:    {info.runtime} (what --runtime auto runs queries on, on this machine)",
        f"views:      {format_views(info.views)}",
        "onnx:       " + (", ".join(f"{name} ({state})" for name, state in info.onnx_models.items())
                          or "none stored (exported from torch by the first command that needs it)"),
        f"int8:       {format_precision_check(info.precision_check)}",
        f"vectors:    {info.vectors} in {info.index_type} (generation {info.generation}, "
        f"{info.pending_changes} changes since the snapshot)" if not info.held_by else
        f"vectors:    not read: Milvus Lite is held by {info.held_by} (generation {info.generation})",
        f"store:      {info.vector_store}",
        f"memory:     {human_size(round(info.memory_bytes_per_image))} per image ({info.index_factory} index, "
        f"held by readers)" if info.vector_store == "faiss" else
        f"memory:     held by Milvus ({info.index_factory} index)",
        f"stored:     {human_size(round(info.stored_bytes_per_image))} per image "
        f"({info.stored_dtype or 'no vectors'} in catalog.db)",
        f"rejection:  {format_rejection(info.rejection)}",
        f"tuning:     {format_tuning(info.tuning)}",
        f"catalog:    {info.skus} SKUs, {info.images} images",
        f"disk:       {human_size(info.size_bytes)} ({', '.join(f'{k} {human_size(v)}' for k, v in info.files.items())})",
        f"leftovers:  {describe_leftovers(info.leftovers)}"
        + ("; the next write removes them" if any(info.leftovers.values()) else ""),
        f"consistent: {'yes' if info.consistent else 'NO'}"
        + (", as far as catalog.db tells (the vectors in Milvus Lite were not compared: it is in use)"
           if info.held_by else ""),
    ]
    lines += [f"  problem: {p}" for p in info.problems]
    return "\n".join(lines)
