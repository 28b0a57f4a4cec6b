"""Open-set recognition on Grocery Store: does "not in our catalog" work on products never seen?

The shop sells the 41 SKUs with even class ids: catalog = their iconic + train photos. Customers
photograph all 81: the test photos of the 40 odd-id SKUs are products the shop does not sell
(unknown), those of the even-id SKUs are known. Calibration (``prodsearch calibrate``) uses val
photos only; training never sees an odd-id SKU, and the test split is used by nothing but this
table.

Rows: each model x each rule (top-1 similarity, margin, distance ratio): AUROC, DIR@FAR and
OpenAUC on all test photos, and what the rule's threshold, set on val for the asked false-accept
rate, does on test, for two calibrations: the even-id SKUs left out in folds ("left out"), and
that plus the val photos of half the odd-id SKUs as products the shop does not sell ("+ others");
the false-accept rates at a threshold count the other half's test photos only. "*": the rule
calibrate picks. Models: ImageNet zero-shot, heads only (frozen backbone) and fine-tuned (CPU
preset at 224), both trained on the even-id SKUs' train + iconic photos only.

    python benchmarks/open_set.py                      # trains what it needs (about 25 min on 2 cores)
    python benchmarks/open_set.py --train-out DIR      # reuse train_grocery_store.py's runs in DIR
    python benchmarks/open_set.py --model "GPU preset (448)=runs/gpu/model.pt"   # one more row: a model
                                                       # trained elsewhere on the same even-id SKUs
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from train_grocery_store import DEFAULT_DATASET, PRESETS, ROOT, heads_config, run_training, unseen_config

from prodsearch.catalog.csv_writer import write_catalog_csv
from prodsearch.catalog.listing import read_listing
from prodsearch.eval.calibrate import calibrate_embedded
from prodsearch.eval.evaluate import answer_unknown, open_set_report, score_embedded
from prodsearch.eval.open_set import rates_at
from prodsearch.eval.grocery_store import write_grocery_store_manifests
from prodsearch.eval.report import markdown_table
from prodsearch.indexer.build import build_index
from prodsearch.indexer.product_index import ProductIndex
from prodsearch.indexer.rejection import RULES
from prodsearch.retrieval.encoders import create_encoder

log = logging.getLogger("open_set")
COLUMNS = ["model", "rule", "closed top-1", "AUROC", "DIR@FAR=1%", "DIR@FAR=5%", "OpenAUC",
           "left out: known right", "left out: FAR", "+ others: known right", "+ others: FAR"]


def trained_models(even, train_out: Path, device: str) -> list[tuple[str, str, float]]:
    """(row name, model, training minutes): zero-shot, heads only, fine-tuned, on even-id SKUs."""
    preset = PRESETS["cpu"]
    heads = heads_config(even, train_out / "train-even-heads-224", device)
    fine = unseen_config(even, train_out / "train-even-224", preset, device)  # unseen()'s run, reused
    rows = [("ImageNet zero-shot (224)", preset["model"], 0.0)]
    for name, config in (("heads only (224)", heads), ("fine-tuned, CPU preset (224)", fine)):
        run, minutes = run_training(config)
        rows.append((name, str(run / "model.pt"), minutes))
    return rows


def score_model(name: str, model: str, minutes: float, even, odd, work: Path, far: float, device: str) -> list[dict]:
    """One row per rule: threshold-free metrics on every odd-id SKU's test photos, and the rates at
    the thresholds of two calibrations on val: even-id SKUs left out in folds only, and the same plus
    val photos of half the odd-id SKUs (products the shop does not sell). The rates at a threshold
    count the test photos of the other odd-id half only: products neither calibration saw. Both
    halves are written as manifests beside the others, for trying the CLI on them."""
    encoder = create_encoder(model, device=device)
    build_index(even.catalog_b, work / "index", model=encoder)
    index = ProductIndex.open(work / "index", model=encoder)
    val, known, unknown = (read_listing(m).items for m in (even.val, even.test, odd.test))
    odd_skus = sorted({it.sku for it in unknown})
    seen = set(odd_skus[0::2])  # photographed for calibration; the rest stay unseen
    others = [it for it in read_listing(odd.val).items if it.sku in seen]
    for manifest, items in (("others_val_odd_half.csv", others),
                            ("unseen_test_odd_half.csv", [it for it in unknown if it.sku not in seen])):
        write_catalog_csv(Path(odd.test).parent / manifest, [{"image": it.path, "sku": it.sku, "name": it.name,
                                                             "category": it.category} for it in items])
    start = time.perf_counter()
    embedded = index.embed([it.path for it in val + others + known + unknown])
    seconds = time.perf_counter() - start
    e_val, rest = embedded.split(len(val))
    e_others, rest = rest.split(len(others))
    e_known, e_unknown = rest.split(len(known))
    labels = [val[p].sku for p in e_val.positions.tolist()]
    calibrations = {"left out": calibrate_embedded(labels, e_val.vectors, index, far=far),
                    "+ others": calibrate_embedded(labels + [None] * len(e_others.positions),
                                                   np.concatenate([e_val.vectors, e_others.vectors]), index, far=far)}
    report = score_embedded(known, e_known, index)
    strangers = answer_unknown(unknown, e_unknown, index, None)
    metrics = open_set_report(report.outcomes, strangers, None).by_rule
    unseen = [o for o in strangers if o.truth not in seen]
    correct = [o.correct for o in report.outcomes]
    rows = []
    for rule in RULES:
        m = metrics[rule]
        row = {"model": name, "rule": rule, "closed top-1": report.top1, "AUROC": m.auroc,
               "DIR@FAR=1%": m.dir_at_far["0.01"], "DIR@FAR=5%": m.dir_at_far["0.05"], "OpenAUC": m.open_auc}
        for mode, calibration in calibrations.items():
            [c] = [r for r in calibration.rules if r.rule == rule]
            rates = rates_at(c.threshold, [o.value(rule) for o in report.outcomes], correct,
                             [o.value(rule) for o in unseen])
            mark = " *" if c is calibration.chosen else ""
            row |= {f"{mode}: known right": f"{rates.known_accuracy:.3f}{mark}",
                    f"{mode}: FAR": rates.false_accept_rate, f"{mode}: threshold": c.threshold,
                    f"{mode}: val FAR": c.false_accept_rate, f"{mode}: val known right": c.known_accuracy}
        rows.append(row | {"known": len(report.outcomes), "unknown": len(strangers), "unknown unseen": len(unseen),
                           "calibration photos": len(val) + len(others), "train min": minutes, "embed s": seconds})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "open-set")
    parser.add_argument("--train-out", type=Path, default=ROOT / "benchmarks" / "out" / "train-grocery-store",
                        help="where the training runs are (reused when finished with the same settings)")
    parser.add_argument("--far", type=float, default=0.05, help="false-accept rate calibration aims at")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                        help="also score this model (trained on the even-id SKUs' train + iconic photos only)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("faiss", "prodsearch.retrieval.embedding", "prodsearch.retrieval.weights", "prodsearch.indexer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    even = write_grocery_store_manifests(args.dataset, args.train_out / "manifests", classes="even")
    odd = write_grocery_store_manifests(args.dataset, args.train_out / "manifests", classes="odd")
    rows = []
    extra = [(spec.split("=", 1)[0], spec.split("=", 1)[1], float("nan")) for spec in args.model]
    for i, (name, model, minutes) in enumerate(trained_models(even, args.train_out, args.device) + extra):
        rows += score_model(name, model, minutes, even, odd, args.out / f"model-{i}", args.far, args.device)
        print(markdown_table(rows, COLUMNS), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"far": args.far, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
