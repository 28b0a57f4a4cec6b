"""The Grocery Store dataset (Klasson et al., WACV 2019) as prodsearch manifests.

81 SKUs, one iconic catalog photo each, and phone photos split into train / val / test. Protocol A
indexes the iconic photos only; protocol B indexes the iconic photos plus the train split.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from prodsearch.catalog.csv_writer import write_catalog_csv
from prodsearch.catalog.importers.grocery_store import dataset_dir, read_classes, read_split
from prodsearch.catalog.listing import read_listing
from prodsearch.eval.evaluate import EvalReport, score_embedded
from prodsearch.indexer.build import build_index
from prodsearch.indexer.product_index import ProductIndex
from prodsearch.retrieval.encoders import ModelSource, create_encoder


@dataclass(frozen=True)
class GroceryManifests:
    catalog_a: Path  # iconic photos
    catalog_b: Path  # iconic + train split
    val: Path
    test: Path


CLASS_SUBSETS = ("all", "even", "odd")


def write_grocery_store_manifests(root: str | os.PathLike, out_dir: str | os.PathLike,
                                  classes: str = "all") -> GroceryManifests:
    """Write the CSV manifests of protocols A and B and of the val / test queries into ``out_dir``.

    ``classes="even"`` / ``"odd"`` keep only the SKUs with even / odd class ids: training on one
    half and testing on the other measures how the embedder does on products it never saw.
    """
    if classes not in CLASS_SUBSETS:
        raise ValueError(f"classes must be one of {CLASS_SUBSETS}")
    dataset = dataset_dir(Path(root))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kept = {k: v for k, v in read_classes(dataset).items() if classes == "all" or k % 2 == (classes == "odd")}
    suffix = "" if classes == "all" else f"_{classes}"
    iconic = read_split(dataset, "iconic", kept)
    return GroceryManifests(
        catalog_a=write_catalog_csv(out / f"catalog_a_iconic{suffix}.csv", iconic),
        catalog_b=write_catalog_csv(out / f"catalog_b_iconic_train{suffix}.csv", iconic + read_split(dataset, "train", kept)),
        val=write_catalog_csv(out / f"queries_val{suffix}.csv", read_split(dataset, "val", kept)),
        test=write_catalog_csv(out / f"queries_test{suffix}.csv", read_split(dataset, "test", kept)),
    )


def score_protocols(model: ModelSource, manifests: GroceryManifests, queries: str | os.PathLike, work: Path,
                    **options: str) -> dict[str, EvalReport]:
    """Index the protocol A and B catalogs with ``model`` under ``work`` and score the photos of
    ``queries`` against each, embedding them once for both; ``options``: ``runtime``, ``device``,
    ``precision`` as :func:`~prodsearch.retrieval.encoders.create_encoder` takes them."""
    items = read_listing(queries).items
    encoder = create_encoder(model, **options)
    reports, embedded = {}, None
    for protocol, catalog in (("A", manifests.catalog_a), ("B", manifests.catalog_b)):
        build_index(catalog, work / f"index-{protocol}", model=encoder)
        index = ProductIndex.open(work / f"index-{protocol}", model=encoder)
        if embedded is None:
            embedded = index.embed([it.path for it in items])
        reports[protocol] = score_embedded(items, embedded, index)
    return reports
