"""``index``, ``query`` and ``eval``: thin wrappers over the Python API."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import click

from prodsearch.choices import (CHUNK_PHOTOS, DEFAULT_MODEL, MAX_VIEWS, MILVUS_COLLECTION, MILVUS_LITE_FILE,
                                MILVUS_TOKEN_ENV, MODELS, VECTOR_STORES)
from prodsearch.cli.app import (Progress, batch_option, cli, echo_json, index_option, json_option, query_model_option,
                                quiet_option, rejection_choice, rejection_options, runtime_options, search_options,
                                speaks_for_run, wait_option, workers_option)
from prodsearch.cli.reports import build_report_dict, eval_report_dict
from prodsearch.errors import ProdsearchError

if TYPE_CHECKING:
    from prodsearch.catalog.listing import Skipped
    from prodsearch.eval.evaluate import EvalReport
    from prodsearch.indexer.build import BuildReport
    from prodsearch.indexer.product_index import FusedResult, Match, ProductIndex, QueryResult
    from prodsearch.indexer.rejection import Decision

MAX_LISTED = 20


@cli.command()
@click.argument("catalog", type=click.Path())
@index_option
@click.option("--model", default=None,
              help=f"Embedder: {', '.join(MODELS)} (or lite0-2, b0-b3), optionally @SIZE for its input size "
                   "(lite2@448), or an ensemble of them joined by + (lite0+lite2@448); a checkpoint (.pt) from "
                   f"'prodsearch train', or its export (.onnx) from 'prodsearch export' [default: {DEFAULT_MODEL}; "
                   "an existing index's own model when rebuilding it].")
@click.option("--index-type", default="auto", show_default=True,
              help="Vector index: auto (exact below 100k images, IVF below 2M, IVF-PQ with re-ranking above) "
                   "or a FAISS factory string such as Flat, HNSW32,Flat, IVF4096,Flat; with Milvus the same choice in "
                   "Milvus's names (FLAT, IVF_SQ8, IVF_PQ), or one of them (HNSW, IVF_FLAT, GPU_CAGRA on a server).")
@click.option("--views", type=click.IntRange(min=1, max=MAX_VIEWS), default=None, metavar="N",
              help=f"Embed every photo, catalog and query alike, as the mean of N fixed views (1 to {MAX_VIEWS}: the "
                   "photo, its centre crop, then its corner crops): more accurate on catalogs of a few clean photos "
                   "per product, N times slower embedding, no extra memory (one vector per photo). The index keeps "
                   "it for its queries, add and update [default: 1; an existing index's own when rebuilding it].")
@click.option("--vector-store", type=click.Choice(VECTOR_STORES), default=None,
              help="Where the vectors are searched: faiss (files in the index folder) or milvus (a Milvus "
                   "collection: Milvus Lite inside the index folder, or the server of --milvus-uri); catalog.db "
                   "holds them either way [default: faiss; an existing index's own when rebuilding it].")
@click.option("--milvus-uri", default=None, metavar="URI",
              help=f"A Milvus server or cluster (http://HOST:19530; its token from ${MILVUS_TOKEN_ENV}) or a Milvus "
                   f"Lite folder; implies --vector-store milvus [default: {MILVUS_LITE_FILE} inside the index folder].")
@click.option("--milvus-collection", default=None, metavar="NAME",
              help=f"The collection to create [default: {MILVUS_COLLECTION}]; on a shared server give each index its own.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=CHUNK_PHOTOS, show_default=True, metavar="N",
              help="A new index is embedded and committed N photos at a time: memory holds one chunk of vectors, "
                   "and a build that is stopped resumes after its last committed chunk.")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Continue an interrupted build of the same catalog, model and settings into the same --index "
                   "(photos it committed are not embedded again), or start over.")
@batch_option
@runtime_options
@workers_option
@wait_option
@quiet_option
@json_option
def index(catalog, index_dir, model, index_type, views, vector_store, milvus_uri, milvus_collection, chunk_size, resume,
          batch_size, runtime, device, precision, workers, wait, quiet, as_json):
    """Build an index of the catalog photos in CATALOG.

    CATALOG is a folder with one sub-folder per SKU (catalog/<sku>/*.jpg) or a CSV file with
    header image,sku[,name,category], image paths relative to the CSV.

    \b
    Example:
        prodsearch index shop/catalog/ --index shop/idx
        prodsearch index big-catalog.csv --index big-idx --index-type IVF4096,Flat
        prodsearch index shop/catalog/ --index shop/idx-views --views 6
        prodsearch index shop/catalog/ --index shop/idx-milvus --vector-store milvus
        prodsearch index shop/catalog/ --index shop/idx --milvus-uri http://milvus:19530 --milvus-collection shop
        torchrun --standalone --nproc-per-node 8 -m prodsearch index shop/catalog/ --index shop/idx
    """
    from prodsearch.indexer.build import build_index

    with Progress("Embedding", quiet or not speaks_for_run()) as progress:
        report = build_index(catalog, index_dir, model=model, index_type=index_type, batch_size=batch_size,
                             runtime=runtime, device=device, precision=precision, num_workers=workers,
                             progress=progress, wait=wait, views=views, vector_store=vector_store,
                             milvus_uri=milvus_uri, milvus_collection=milvus_collection, chunk_size=chunk_size,
                             resume=resume)
    if report is None:  # a helper process of a torchrun run: rank 0 reports
        return
    if as_json:
        echo_json(build_report_dict(report))
    else:
        click.echo(format_build_report(report))


def skipped_lines(skipped: list[Skipped], indent: str = "  ") -> list[str]:
    """How many files were skipped, and the first few with their reasons (indented below)."""
    inner = indent + "  "
    more = [f"{inner}... and {len(skipped) - MAX_LISTED} more"] if len(skipped) > MAX_LISTED else []
    return [f"{indent}skipped: {len(skipped)}"] + [f"{inner}{s.path}: {s.reason}" for s in skipped[:MAX_LISTED]] + more


def format_build_report(report: BuildReport) -> str:
    lines = [f"Indexed {report.images} images of {report.skus} SKUs into {report.index_dir}"]
    lines.append(f"  duplicates: {len(report.duplicates)} (identical files within a SKU, stored once)")
    lines += [f"    {d.path} = {d.same_as}" for d in report.duplicates[:MAX_LISTED]]
    if report.shared_across_skus:
        lines.append(f"  warning: {report.shared_across_skus} images are identical files under different SKUs")
    lines += skipped_lines(report.skipped)
    if report.resumed:
        lines.append(f"  resumed: {report.resumed} photos committed by the interrupted build were not embedded again")
    if report.precision_check is not None:
        lines.append(f"  int8: {report.precision_check.describe()}")
    views = f", {report.views} views each" if report.views > 1 else ""
    lines.append(f"  speed: {report.images_per_second:.1f} images/s{views} "
                 f"({report.embed_seconds:.1f}s embedding, {report.seconds:.1f}s total)")
    return "\n".join(lines)


@cli.command()
@click.argument("photos", nargs=-1, required=True, type=click.Path())
@index_option
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True, help="SKUs to list per photo.")
@click.option("--category", metavar="PREFIX",
              help="Only products in this subtree of the category tree (e.g. Dairy or Dairy/Milk).")
@click.option("--as-one", is_flag=True, help="The photos show one product: fuse them into one answer.")
@rejection_options
@query_model_option
@runtime_options
@json_option
@search_options
def query(photos, index_dir, top_k, category, as_one, threshold, no_reject, model, runtime, device, precision, as_json,
          nprobe, ef_search):
    """Rank the catalog SKUs that PHOTO shows, best first.

    --category restricts the search itself to a subtree, so it lists the best products there
    even when other categories hold closer ones. --as-one answers several photos of the same
    product together: a SKU scores the mean, over the photos, of its best image's similarity.
    In an index calibrated by 'prodsearch calibrate', a photo whose best SKU falls short of the
    rule is answered "not in catalog" (JSON: "match": null), its candidates still listed.

    \b
    Example:
        prodsearch query snapshot.jpg --index shop/idx --top-k 3
        prodsearch query snapshot.jpg --index shop/idx --category Dairy/Milk
        prodsearch query front.jpg back.jpg --index shop/idx --as-one
    """
    rejection = rejection_choice(threshold, no_reject)
    unusable = {p: reason for p in photos if (reason := photo_problem(p))}
    if len(unusable) == len(photos):  # nothing to answer: say so before loading the model
        raise unanswered(unusable, len(photos))
    product_index = open_index(index_dir, model, runtime, device, precision, nprobe, ef_search)
    if as_one:
        fused = product_index.query_as_one(list(photos), top_k=top_k, category=category, rejection=rejection)
        if as_json:
            echo_json(fused.to_dict())
        else:
            click.echo(format_fused_result(fused))
        failed = fused.errors
    else:
        results = product_index.query(list(photos), top_k=top_k, category=category, rejection=rejection)
        if as_json:
            echo_json([r.to_dict() for r in results])
        else:
            click.echo("\n".join(format_query_result(r) for r in results))
        failed = {r.path: r.error for r in results if r.error}
    if failed:  # one rule: the good photos are answered, the bad ones reported, and the exit code says so
        raise unanswered(failed, len(photos))


def photo_problem(path: str) -> str | None:
    """Why ``path`` cannot be a photo before opening it (the reasons the image reader gives too)."""
    if not os.path.lexists(path) or (os.path.islink(path) and not os.path.exists(path)):
        return "file not found"
    if os.path.isdir(path):
        return "is a directory"
    return None


def unanswered(failed: dict[str, str], total: int) -> ProdsearchError:
    listed = "; ".join(f"{path}: {reason}" for path, reason in list(failed.items())[:3])
    more = f"; and {len(failed) - 3} more" if len(failed) > 3 else ""
    if total == 1:
        return ProdsearchError(f"cannot answer {listed}")
    return ProdsearchError(f"{len(failed)} of {total} photos could not be answered: {listed}{more}")


def open_index(index_dir: str, model: str | None, runtime: str, device: str, precision: str, nprobe: int | None,
               ef_search: int | None) -> ProductIndex:
    """The index a read command searches; loading it (the model, faiss) waits until a command runs."""
    from prodsearch.indexer.product_index import ProductIndex

    return ProductIndex.open(index_dir, model=model, runtime=runtime, device=device, precision=precision,
                             search_device=device, search_params=search_params(nprobe, ef_search))


def search_params(nprobe: int | None, ef_search: int | None) -> dict[str, int]:
    return {name: value for name, value in (("nprobe", nprobe), ("efSearch", ef_search)) if value is not None}


def format_query_result(result: QueryResult) -> str:
    if result.error:
        return f"{result.path}: {result.error}"
    return "\n".join([result.path] + format_verdict(result.matches, result.decision) + format_matches(result.matches))


def format_fused_result(result: FusedResult) -> str:
    used = len(result.paths) - len(result.errors)
    lines = [f"{used} photos as one product: {', '.join(p for p in result.paths if p not in result.errors)}"]
    lines += [f"  left out {path}: {reason}" for path, reason in result.errors.items()]
    return "\n".join(lines + format_verdict(result.matches, result.decision) + format_matches(result.matches))


def format_verdict(matches: list[Match], decision: Decision | None) -> list[str]:
    """The rule's answer above the ranked list: the SKU, or "not in catalog" with why."""
    if decision is None or not matches:
        return []
    if decision.accepted:
        return [f"  -> {matches[0].sku}  ({decision.rule} {decision.value:.3f} >= {decision.threshold:.3f})"]
    return [f"  -> not in catalog  ({decision.rule} {decision.value:.3f} < {decision.threshold:.3f}; "
            f"nearest: {matches[0].sku})"]


def format_matches(matches: list[Match]) -> list[str]:
    width = max((len(m.sku) for m in matches), default=0)
    return [f"  {rank}. {m.sku:<{width}}  {m.score:.3f}  {m.name}  ({shown_path(m.image_path)})"
            for rank, m in enumerate(matches, start=1)]


def shown_path(path: str) -> str:
    """A catalog photo's path as a person reads it: relative to the working directory, as the query
    photos were given (``--json`` keeps the absolute path a program opens)."""
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return path


@cli.command(name="eval")
@click.argument("queries", type=click.Path())
@index_option
@click.option("--unknown", type=click.Path(), default=None,
              help="Photos of products the catalog does not hold (same formats as QUERIES): scores how well "
                   "they are told apart (AUROC, DIR@FAR, OpenAUC, false accepts).")
@click.option("--report", "report_dir", type=click.Path(), default=None,
              help="Also write an HTML report (REPORT/index.html, opens from disk): confusions, worst "
                   "queries, score histograms. REPORT must be a new or empty folder, or an earlier report.")
@rejection_options
@query_model_option
@batch_option
@runtime_options
@workers_option
@quiet_option
@json_option
@search_options
def eval_(queries, index_dir, unknown, report_dir, threshold, no_reject, model, batch_size, runtime, device, precision,
          workers, quiet, as_json, nprobe, ef_search):
    """Measure top-1 / top-5 SKU accuracy of labelled photos in QUERIES.

    QUERIES has the catalog formats: a folder per SKU, or a CSV with header image,sku; the folder
    name or sku column is the ground truth. Where products have categories, accuracy is also
    reported at each level of the category tree (the wrong SKU in the right category counts
    there) and per category, worst first. A CSV with a product column groups several photos of one
    product: each group is also answered as one (see query --as-one) and scored per product.
    With the index's "not in catalog" rule (prodsearch calibrate) or --unknown photos, it also
    reports rejection (JSON: open_set; keys in the README).

    \b
    Example:
        prodsearch eval shop/snapshots/ --index shop/idx --json
        prodsearch eval shop/snapshots/ --index shop/idx --unknown other-products/ --report report/
    """
    from prodsearch.eval.evaluate import evaluate

    rejection = rejection_choice(threshold, no_reject)
    if report_dir is not None:
        from prodsearch.eval.report_folder import check_report_dir

        check_report_dir(report_dir)  # before the evaluation, which takes a while
    product_index = open_index(index_dir, model, runtime, device, precision, nprobe, ef_search)
    with Progress("Evaluating", quiet) as progress:
        report = evaluate(queries, product_index, unknown=unknown, rejection=rejection, batch_size=batch_size,
                          num_workers=workers, progress=progress)
    written = None
    if report_dir is not None:
        from prodsearch.eval.html_report import write_report

        written = write_report(report, report_dir)
    if as_json:
        echo_json({**eval_report_dict(report), "report": None if written is None else str(written)},
                  indent=None)  # one line, as eval has always printed it
    else:
        click.echo(format_eval_report(report))
        if written is not None:
            click.echo(f"report: {written}")


WORST_CATEGORIES = 10  # categories listed by eval; --json has them all


def format_eval_report(report: EvalReport) -> str:
    lines = [f"n: {report.n}", f"top-1: {report.top1:.4f}", f"top-5: {report.top5:.4f}"]
    if report.products:
        p = report.products
        lines.append(f"products: {p.n} ({p.photos} photos fused per product)  top-1 {p.top1:.4f}  top-5 {p.top5:.4f}")
    if report.unknown_sku:
        lines.append(f"queries of SKUs missing from the index: {report.unknown_sku} (counted as misses)")
    for level in report.levels:
        lines.append(f"category level {level.level}: {level.top1:.4f} (n={level.n})")
    if report.categories:
        shown = report.categories[:WORST_CATEGORIES]
        lines.append(f"top-1 per category, worst first ({len(shown)} of {len(report.categories)}):")
        width = max(len(c.category) for c in shown)
        lines += [f"  {c.category:<{width}}  {c.top1:.4f}  (n={c.n})" for c in shown]
    lines += format_open_set(report)
    lines.append(f"skipped: {len(report.skipped)}")
    lines += [f"  {s.path}: {s.reason}" for s in report.skipped[:MAX_LISTED]]
    lines.append(f"speed: {report.images_per_second:.1f} images/s")
    return "\n".join(lines)


def format_open_set(report: EvalReport) -> list[str]:
    o = report.open_set
    if o is None:
        return []
    lines = []
    if o.at_threshold is not None:
        t = o.at_threshold
        lines.append(f"not in catalog: {o.rule} >= {o.threshold:.4g} accepts; known photos right and accepted "
                     f"{t.known_accuracy:.4f}, rejected {t.known_rejected:.4f}"
                     + (f"; unknown photos accepted {t.false_accept_rate:.4f} (n={o.unknown})"
                        if t.false_accept_rate is not None else ""))
    else:
        lines.append("not in catalog: no rule (uncalibrated index, or --no-reject); metrics of the top-1 score")
    if o.scores is not None:
        dirs = "  ".join(f"DIR@FAR={float(far):.0%} {v:.4f}" for far, v in o.scores.dir_at_far.items())
        lines.append(f"open set ({o.rule or 'score'}): AUROC {o.scores.auroc:.4f}  {dirs}  OpenAUC {o.scores.open_auc:.4f}")
    return lines
