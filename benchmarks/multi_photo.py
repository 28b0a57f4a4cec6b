"""Several photos of one product: does fusing them beat answering each photo alone?

The Grocery Store test photos of each SKU are put into random pairs (seed 0; a SKU's odd photo out
is left out), written as a query manifest with a ``product`` column. Each pair is answered as one
product (``query --as-one``: a SKU scores the mean over the two photos of its best image's
similarity) and compared with the same photos answered one at a time. Protocols A (iconic catalog)
and B (iconic + train photos), for each model given.

    python benchmarks/multi_photo.py                                   # zero-shot lite0
    python benchmarks/multi_photo.py --model lite0 --model runs/x/model.pt
"""

from __future__ import annotations

import argparse
import logging
import random
from collections import defaultdict
from pathlib import Path

from prodsearch.catalog import read_listing, write_catalog_csv
from prodsearch.eval.grocery_store import GroceryManifests, score_protocols, write_grocery_store_manifests
from prodsearch.eval.report import markdown_table
from prodsearch.retrieval.factory import create_embedder

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATASET = ROOT.parent / "shared" / "datasets" / "grocery-store"


def write_pairs(test_manifest: Path, out: Path, seed: int = 0) -> Path:
    """The test manifest with a ``product`` column pairing each SKU's photos at random."""
    by_sku = defaultdict(list)
    for item in read_listing(test_manifest).items:
        by_sku[item.sku].append(item)
    rng = random.Random(seed)
    paired = []
    for sku, photos in sorted(by_sku.items()):
        rng.shuffle(photos)
        for n in range(len(photos) // 2):
            paired += [{"image": p.path, "sku": sku, "name": p.name, "category": p.category, "product": f"{sku}-pair{n}"}
                       for p in photos[2 * n:2 * n + 2]]
    return write_catalog_csv(out, paired, ("name", "category", "product"))


def score(model: str, manifests: GroceryManifests, pairs: Path, work: Path, device: str) -> list[dict]:
    embedder = create_embedder(model)
    return [{"model": embedder.config.label, "protocol": protocol, "photos": report.n,
             "per photo top-1": report.top1, "per photo top-5": report.top5,
             "pairs": report.products.n, "fused pair top-1": report.products.top1,
             "fused pair top-5": report.products.top5}
            for protocol, report in score_protocols(embedder, manifests, pairs, work, device=device).items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "multi-photo")
    parser.add_argument("--model", action="append", help="embedder name or checkpoint (repeatable) [lite0]")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    manifests = write_grocery_store_manifests(args.dataset, args.out / "manifests")
    pairs = write_pairs(manifests.test, args.out / "manifests" / "queries_test_pairs.csv")
    rows = []
    for n, model in enumerate(args.model or ["tf_efficientnet_lite0"]):
        rows += score(model, manifests, pairs, args.out / f"model-{n}", args.device)
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
