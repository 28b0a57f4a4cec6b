"""The Products-10K ablation on Grocery Store: does each training trick earn its place?

Rows, as in the paper's Table 1: ImageNet zero-shot; trained at 224; trained at 448;
+ balanced-subset finetune; + accuracy-loss finetune. Each is scored on the test split under
protocol A (catalog = iconic photos) and B (iconic + train photos). Then the unseen-SKU check:
train on the even class ids only and score the odd ones (never seen) against zero-shot.

Training data = train split + iconic photos; validation = val split (monitoring only); the test split
is used for nothing but the final scores.

    python benchmarks/train_grocery_store.py --preset cpu     # fits a 2-core CPU (about 1.5 h)
    python benchmarks/train_grocery_store.py --preset gpu     # the paper's recipe, for a GPU machine
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

from prodsearch.eval.grocery_store import GroceryManifests, score_protocols, write_grocery_store_manifests
from prodsearch.eval.report import markdown_table
from prodsearch.retrieval.factory import create_embedder
from prodsearch.retrieval.training import TrainConfig, train

log = logging.getLogger("train_grocery_store")
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATASET = ROOT.parent / "shared" / "datasets" / "grocery-store"

# Settings that fit. CPU: the stem and first 4 of lite0's 7 stages stay frozen (2x faster
# training), fewer epochs. GPU: the whole network, the paper's schedule scaled to this dataset.
PRESETS = {
    "cpu": dict(model="tf_efficientnet_lite0", frozen_stages=4, epochs=10, lr_steps=(7,), batch_size=32,
                accumulate=2, balanced_epochs=2, accuracy_epochs=2),
    "gpu": dict(model="tf_efficientnet_lite0", frozen_stages=0, epochs=30, lr_steps=(20, 25), batch_size=64,
                accumulate=1, balanced_epochs=3, accuracy_epochs=3),
}


def score(model: str, manifests: GroceryManifests, work: Path, device: str) -> dict[str, float]:
    """Test top-1 / top-5 under protocols A and B; the test photos are embedded once for both."""
    reports = score_protocols(model, manifests, manifests.test, work, device=device)
    out = {}
    for protocol, report in reports.items():
        out |= {f"{protocol} top-1": report.top1, f"{protocol} top-5": report.top5}
    out["queries"] = reports["A"].n
    return out


def run_training(config: TrainConfig) -> tuple[Path, float]:
    """Train, or reuse a finished run of the same configuration in the same folder (a re-run after an
    interruption then only re-scores). Minutes: the run's wall time (data loading and feature
    caching included), or for a run timed by nothing but its history, the sum of its epochs."""
    out = Path(config.out)
    done = out / "model.pt", out / "config.json", out / "history.json"
    timing = out / "train_seconds.json"
    # Settings added since a run was saved read as their defaults (TrainConfig.from_dict), as train does.
    if all(p.is_file() for p in done) and TrainConfig.from_dict(json.loads(done[1].read_text())) == config:
        log.info("reusing the finished training run in %s (delete it to retrain)", out)
    else:
        start = time.perf_counter()
        train(config)
        timing.write_text(json.dumps({"seconds": time.perf_counter() - start}) + "\n")
    if timing.is_file():
        return out, json.loads(timing.read_text())["seconds"] / 60
    return out, sum(r["seconds"] for r in json.loads(done[2].read_text())) / 60


def ablation(manifests: GroceryManifests, out: Path, preset: dict, device: str) -> list[dict]:
    base = TrainConfig(train=str(manifests.catalog_b), val=str(manifests.val), out="", device=device, **preset)
    rows = [{"row": "ImageNet zero-shot (224)", "train min": 0.0,
             **score(preset["model"], manifests, out / "zero-shot", device)}]
    low = replace(base, out=str(out / "train-224"), img_size=224, resize=256, balanced_epochs=0, accuracy_epochs=0)
    run, minutes = run_training(low)
    rows.append({"row": "trained at 224", "train min": minutes, **score(str(run / "model.pt"), manifests, run, device)})
    high = replace(base, out=str(out / "train-448"), img_size=448, resize=512)
    run, minutes = run_training(high)
    for stage, name in (("main", "trained at 448"), ("balanced", "+ balanced finetune"),
                        ("accuracy", "+ accuracy loss")):
        rows.append({"row": name, "train min": minutes if stage == "main" else 0.0,
                     **score(str(run / f"model-{stage}.pt"), manifests, run / stage, device)})
    return rows


def heads_config(manifests: GroceryManifests, out: Path, device: str) -> TrainConfig:
    """The cheapest training: ImageNet backbone frozen, its pooled features cached once, only the
    embedding head and ArcFace classifier trained (minutes on a CPU), on protocol B's catalog."""
    return TrainConfig(train=str(manifests.catalog_b), val=str(manifests.val), out=str(out), device=device,
                       freeze_backbone=True, epochs=30, lr_steps=(20,), accumulate=1)


def unseen_config(even: GroceryManifests, out: Path, preset: dict, device: str) -> TrainConfig:
    """The preset's main stage on the even-id SKUs only (protocol B's catalog of them)."""
    return TrainConfig(train=str(even.catalog_b), val=str(even.val), out=str(out), device=device,
                       **{**preset, "balanced_epochs": 0, "accuracy_epochs": 0})


def heads_only(manifests: GroceryManifests, out: Path, device: str) -> list[dict]:
    run, minutes = run_training(heads_config(manifests, out / "train-heads-224", device))
    return [{"row": "heads only, frozen backbone (224)", "train min": minutes,
             **score(str(run / "model.pt"), manifests, run, device)}]


def unseen(dataset: Path, out: Path, preset: dict, device: str) -> list[dict]:
    """Train on even class ids, score the odd ones: products the embedder never saw."""
    even = write_grocery_store_manifests(dataset, out / "manifests", classes="even")
    odd = write_grocery_store_manifests(dataset, out / "manifests", classes="odd")
    run, minutes = run_training(unseen_config(even, out / "train-even-224", preset, device))
    return [
        {"row": "odd SKUs, ImageNet zero-shot", "train min": 0.0, **score(preset["model"], odd, out / "odd-zero", device)},
        {"row": "odd SKUs, trained on even SKUs (224)", "train min": minutes,
         **score(str(run / "model.pt"), odd, run, device)},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "train-grocery-store")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--only", choices=["ablation", "heads", "unseen"], default=None, help="run one part")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("faiss", "prodsearch.retrieval.embedding", "prodsearch.retrieval.weights", "prodsearch.indexer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    preset = PRESETS[args.preset]
    manifests = write_grocery_store_manifests(args.dataset, args.out / "manifests")
    columns = ["row", "A top-1", "A top-5", "B top-1", "B top-5", "queries", "train min"]
    results = {"preset": args.preset, "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in preset.items()}}
    if args.only in (None, "ablation"):
        results["ablation"] = ablation(manifests, args.out, preset, args.device)
        print(markdown_table(results["ablation"], columns), flush=True)
    if args.only in (None, "heads"):
        results["heads"] = heads_only(manifests, args.out, args.device)
        print("\n" + markdown_table(results["heads"], columns), flush=True)
    if args.only in (None, "unseen"):
        results["unseen"] = unseen(args.dataset, args.out, preset, args.device)
        print("\n" + markdown_table(results["unseen"], columns))
    name = f"results-{args.preset}" + (f"-{args.only}" if args.only else "")
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
