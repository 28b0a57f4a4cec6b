"""Top-1 / top-5 SKU accuracy on the Grocery Store dataset (real phone photos), protocols A and B.

A: catalog = the 81 iconic photos; B: catalog = iconic photos + the train split's photos.
Queries = the test split (2,485 photos). Also reports indexing images/s, evaluation images/s
and the median latency of a single-photo query (embedding + search).

    python benchmarks/grocery_store.py                      # dataset at ../shared/datasets/grocery-store
    python benchmarks/grocery_store.py --model lite2 --json
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

from prodsearch.eval.evaluate import evaluate
from prodsearch.eval.grocery_store import write_grocery_store_manifests
from prodsearch.eval.report import markdown_table
from prodsearch.indexer.build import build_index
from prodsearch.indexer.product_index import ProductIndex
from prodsearch.catalog.listing import read_listing
from prodsearch.choices import DEFAULT_MODEL, PRECISION_CHOICES, RUNTIME_CHOICES
from prodsearch.retrieval.encoders import create_encoder
from prodsearch.retrieval.runtime import describe

from cli_startup import cpu_line

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATASET = ROOT.parent / "shared" / "datasets" / "grocery-store"


def median_query_ms(index: ProductIndex, photos: list[Path]) -> float:
    """Median wall time of `query` on one photo at a time (decode, embed, search, catalog lookup)."""
    index.query(photos[:1], num_workers=0)  # warm-up
    times = []
    for photo in photos:
        start = time.perf_counter()
        index.query([photo], num_workers=0)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def run(dataset: Path, out: Path, model: str, options: dict[str, str], batch_size: int | None, workers: int | None,
        latency_queries: int) -> tuple[list[dict], str]:
    manifests = write_grocery_store_manifests(dataset, out)
    # int8 is calibrated on the catalog's own photos: protocol B's (A's 81 iconic photos are among them).
    encoder = create_encoder(model, calibration=[it.path for it in read_listing(manifests.catalog_b).items], **options)
    test_photos = [it.path for it in read_listing(manifests.test).items]
    latency_photos = test_photos[:: max(1, len(test_photos) // latency_queries)][:latency_queries]
    rows = []
    for protocol, catalog in (("A: iconic", manifests.catalog_a), ("B: iconic + train", manifests.catalog_b)):
        index_dir = out / f"index-{protocol[0]}"
        build = build_index(catalog, index_dir, model=encoder, batch_size=batch_size, num_workers=workers)
        index = ProductIndex.open(index_dir, model=encoder)
        report = evaluate(manifests.test, index, batch_size=batch_size, num_workers=workers)
        rows.append({
            "protocol": protocol,
            "catalog images": build.images,
            "queries": report.n,
            "top-1": report.top1,
            "top-5": report.top5,
            "index img/s": build.images_per_second,
            "eval img/s": report.images_per_second,
            "median query ms": median_query_ms(index, latency_photos),
        })
        logging.info("%s: %s", protocol, rows[-1])
    return rows, describe(encoder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET, help="Grocery Store dataset folder")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "grocery-store",
                        help="where manifests and indexes are written")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--runtime", default="auto", choices=RUNTIME_CHOICES)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=PRECISION_CHOICES)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--latency-queries", type=int, default=50)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("faiss").setLevel(logging.WARNING)
    options = {"runtime": args.runtime, "device": args.device, "precision": args.precision}
    rows, runtime = run(args.dataset, args.out, args.model, options, args.batch_size, args.workers,
                        args.latency_queries)
    machine = f"{cpu_line()}; {runtime}"
    if args.json:
        print(json.dumps({"model": args.model, "machine": machine, "rows": rows}, indent=2))
    else:
        print(f"Grocery Store, model {args.model}, {machine}\n")
        print(markdown_table(rows))


if __name__ == "__main__":
    main()
