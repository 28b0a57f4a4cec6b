"""What ``--json`` prints: one conversion per kind of report, so that every command spells a skipped
file, a duplicate and a duration the same way.

The rules (README, "Commands"): a skipped file is ``{"path", "reason"}``, a duplicate file
``{"path", "same_as", "sku"}``, paths are strings, durations are seconds as floats (``seconds``,
``embed_seconds``, rounded to the millisecond), speeds are ``images_per_second``. The report
objects are imported for type checking only: ``--help`` must not load what builds them.
"""

from __future__ import annotations

from dataclasses import asdict
from os import PathLike
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prodsearch.catalog.importers import ImportReport
    from prodsearch.catalog.listing import Skipped
    from prodsearch.demo import DemoReport, TrainedRun
    from prodsearch.eval.evaluate import EvalReport
    from prodsearch.eval.stats import CatalogStats
    from prodsearch.indexer.build import BuildReport
    from prodsearch.indexer.ingest import Duplicate
    from prodsearch.indexer.lifecycle import ChangeReport
    from prodsearch.retrieval.training import EpochRecord, TrainResult


def seconds(value: float) -> float:
    """A duration as JSON shows it: seconds, to the millisecond (eval's own rounding)."""
    return round(value, 3)


def speed(value: float) -> float:
    return round(value, 2)


def path_or_none(path: str | PathLike | None) -> str | None:
    return None if path is None else str(path)


def skipped_list(skipped: list[Skipped]) -> list[dict[str, str]]:
    """Every skipped file with why: a list, not a count, so a script can act on them."""
    return [s.to_dict() for s in skipped]


def duplicate_list(duplicates: list[Duplicate]) -> list[dict[str, str]]:
    return [{"path": str(d.path), "same_as": str(d.same_as), "sku": d.sku} for d in duplicates]


def build_report_dict(report: BuildReport) -> dict[str, Any]:
    """``index --json``."""
    return {
        "index_dir": str(report.index_dir),
        "images": report.images,
        "skus": report.skus,
        "duplicates": duplicate_list(report.duplicates),
        "shared_across_skus": report.shared_across_skus,
        "skipped": skipped_list(report.skipped),
        "seconds": seconds(report.seconds),
        "embed_seconds": seconds(report.embed_seconds),
        "images_per_second": speed(report.images_per_second),
        "views": report.views,
        "resumed": report.resumed,
        "precision_check": None if report.precision_check is None else report.precision_check.to_dict(),
    }


def change_report_dict(report: ChangeReport) -> dict[str, Any]:
    """``add``, ``update`` and ``remove --json``: one schema; ``generation`` is null when nothing changed."""
    return {
        "index_dir": str(report.index_dir),
        "generation": report.generation,
        "added": report.added,
        "removed": report.removed,
        "changed": report.changed,
        "unchanged": report.unchanged,
        "new_skus": list(report.new_skus),
        "removed_skus": list(report.removed_skus),
        "duplicates": duplicate_list(report.duplicates),
        "skipped": skipped_list(report.skipped),
        "kept_unreadable": report.kept_unreadable,
        "seconds": seconds(report.seconds),
        "embed_seconds": seconds(report.embed_seconds),
        "images_per_second": speed(report.images_per_second),
    }


def import_report_dict(report: ImportReport) -> dict[str, Any]:
    """``import --json``."""
    return {
        "manifest": str(report.manifest),
        "images": report.images,
        "skus": report.skus,
        "products": report.products,
        "categories": report.categories,
        "skipped": skipped_list(report.skipped),
        "seconds": seconds(report.seconds),
    }


def eval_report_dict(report: EvalReport) -> dict[str, Any]:
    """``eval --json``: the report's own dict."""
    return report.to_dict()


def stats_dict(stats: CatalogStats, out: str | PathLike, plots: list[PathLike]) -> dict[str, Any]:
    """``stats --json``: what ``stats.json`` holds, plus where it and the plots were written."""
    return {**stats.to_dict(), "out": str(out), "plots": [str(p) for p in plots]}


def epoch_dict(record: EpochRecord) -> dict[str, Any]:
    return {**asdict(record), "seconds": seconds(record.seconds), "images_per_second": speed(record.images_per_second)}


def train_result_dict(result: TrainResult, elapsed: float) -> dict[str, Any]:
    """``train --json``; ``elapsed`` is the command's wall time (the result does not keep one);
    ``comparison`` is what ``OUT/comparison.json`` holds."""
    from prodsearch.retrieval.comparison import comparison_dict

    return {
        "out": str(result.out),
        "model_path": str(result.model_path),
        "best_path": path_or_none(result.best_path),
        "skus": len(result.classes),
        "classes": list(result.classes),
        "history": [epoch_dict(r) for r in result.history],
        "comparison": comparison_dict(result.comparison, result.uncompared),
        "seconds": seconds(elapsed),
    }


def demo_report_dict(report: DemoReport, kept: str | PathLike | None) -> dict[str, Any]:
    """``demo --json``; ``out`` is null when the shop was generated in a temporary folder (removed)."""
    products = report.dataset.products
    return {
        "out": path_or_none(kept),
        "skus": len(products),
        "product_lines": len({p.family for p in products}),
        "build": build_report_dict(report.build),
        "evaluation": eval_report_dict(report.evaluation),
        "example": report.example.to_dict(),
        "example_truth": report.example_truth,
        "trained": trained_run_dict(report.trained) if report.trained else None,
        "seconds": seconds(report.seconds),
    }


def trained_run_dict(run: TrainedRun) -> dict[str, Any]:
    """The trained side of ``demo --json``: how it was trained, then ``build``, ``evaluation`` and
    ``example`` as the ImageNet side has them."""
    return {
        "model_path": str(run.training.model_path),
        "train_images": run.train_images,
        "epochs": run.config.epochs,
        "history": [epoch_dict(r) for r in run.training.history],
        "train_seconds": seconds(run.train_seconds),
        "build": build_report_dict(run.build),
        "evaluation": eval_report_dict(run.evaluation),
        "example": run.example.to_dict(),
    }
