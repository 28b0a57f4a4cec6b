"""Issue 16's ablation on Grocery Store: every accuracy lever a row, every protocol a column.

Protocols: A0 = catalog-only (training may use the 81 iconic photos and nothing else; catalog =
iconic photos), A = iconic catalog with training on train + iconic, B = iconic + train catalog,
unseen = trained on even-id SKUs, scored on the odd ones (A catalog). Queries: the val split
(``--split val``, where every choice is made) or the test split (``--split test``, the final table).

Embeddings are cached per model and photo list under ``--out``; re-ranking, views and SKU scoring
are computed on them with the library's own functions (:mod:`prodsearch.indexer.rerank`,
:mod:`prodsearch.retrieval.views`). Training rows reuse a finished run in the output folder.

    python benchmarks/accuracy_levers.py --split val
    python benchmarks/accuracy_levers.py --split test --only zero-shot,training
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from prodsearch.catalog.listing import read_listing
from prodsearch.eval.grocery_store import GroceryManifests, write_grocery_store_manifests
from prodsearch.eval.report import markdown_table
from prodsearch.indexer.rerank import alpha_qe, dba, normalized, sku_scores
from prodsearch.retrieval.embedding import embed_files, embed_pil
from prodsearch.retrieval.encoders import create_encoder
from prodsearch.retrieval.images import load_image
from prodsearch.retrieval.training import TrainConfig
from prodsearch.retrieval.views import crop_views

from cli_startup import cpu_line
from train_grocery_store import DEFAULT_DATASET, PRESETS, ROOT, run_training

log = logging.getLogger("accuracy_levers")
PARTS = ("zero-shot", "views", "rerank", "backbones", "training", "trained-levers", "finetuned", "cost")
LITE0 = "tf_efficientnet_lite0"


class Bank:
    """Embeddings of photo lists, computed once per (model, list, views) and kept as .npy files."""

    def __init__(self, out: Path):
        self.out, self.encoders = out, {}

    def path(self, tag: str, manifest: Path, views: int) -> Path:
        return self.out / "embeddings" / tag / f"{manifest.stem}-v{views}.npy"

    def has(self, tag: str, manifest: Path, views: int) -> bool:
        return self.path(tag, manifest, views).is_file()

    def get(self, tag: str, model: str, manifest: Path, views: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """``(vectors, skus)``; with ``views > 1`` vectors are ``(n, views, dim)``."""
        items = read_listing(manifest).items
        skus = np.array([it.sku for it in items])
        path = self.path(tag, manifest, views)
        if not path.is_file():
            if model not in self.encoders:
                self.encoders[model] = create_encoder(model, runtime="torch")
            encoder = self.encoders[model]
            if views == 1:
                vectors = embed_files(encoder, [it.path for it in items]).vectors
            else:
                vectors = np.concatenate([
                    embed_pil(encoder, [v for it in items[i:i + 8] for v in crop_views(load_image(it.path), views)])
                    for i in range(0, len(items), 8)]).reshape(len(items), views, -1)
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, vectors)
        return np.load(path), skus


def accuracy(queries: np.ndarray, truth: np.ndarray, catalog: np.ndarray, catalog_skus: np.ndarray,
             how: str = "max") -> tuple[float, float]:
    """Top-1 and top-5 SKU accuracy, exact search, a SKU scoring its photos by ``how``."""
    skus, scores = sku_scores(normalized(queries) @ normalized(catalog).T, catalog_skus, how)
    ranked = skus[np.argsort(-scores, axis=1)[:, :5]]
    return float((ranked[:, 0] == truth).mean()), float((ranked == truth[:, None]).any(axis=1).mean())


class Protocols:
    """The four protocols' catalogs and queries for one split."""

    def __init__(self, dataset: Path, out: Path, split: str):
        self.all = write_grocery_store_manifests(dataset, out / "manifests")
        self.even = write_grocery_store_manifests(dataset, out / "manifests", classes="even")
        self.odd = write_grocery_store_manifests(dataset, out / "manifests", classes="odd")
        self.split = split

    def queries(self, m: GroceryManifests) -> Path:
        return m.val if self.split == "val" else m.test

    def query_vectors(self, bank: Bank, tag: str, model: str, m: GroceryManifests, views: int):
        """The queries of ``m``; the odd SKUs' are picked out of all queries when those are embedded
        already (a zero-shot model serves every protocol), rather than embedded twice."""
        if m is self.odd and bank.has(tag, self.queries(self.all), views):
            q, truth = bank.get(tag, model, self.queries(self.all), views)
            keep = np.isin(truth, [it.sku for it in read_listing(self.queries(self.odd)).items])
            return q[keep], truth[keep]
        return bank.get(tag, model, self.queries(m), views)

    def score(self, bank: Bank, tag: str, model: str, protocols: tuple[str, ...], **lever) -> dict:
        """Top-1/top-5 of ``model`` on each of ``protocols``, with the embedding-level ``lever``:
        ``tta``/``catalog_views`` (views per photo), ``catalog_fuse`` (mean|max of views),
        ``qe``/``dba`` (k), ``how`` (SKU scoring)."""
        row = {}
        for p in protocols:
            m = self.odd if p == "unseen A" else self.all
            catalog = m.catalog_b if p == "B" else m.catalog_a
            q, truth = self.query_vectors(bank, tag, model, m, lever.get("tta", 1))
            c, c_skus = bank.get(tag, model, catalog, lever.get("catalog_views", 1))
            if q.ndim == 3:
                q = normalized(normalized(q).mean(axis=1))
            if c.ndim == 3:
                if lever.get("catalog_fuse", "mean") == "mean":
                    c = normalized(normalized(c).mean(axis=1))
                else:
                    c_skus = np.repeat(c_skus, c.shape[1])
                    c = c.reshape(-1, c.shape[-1])
            if lever.get("dba"):
                c = dba(normalized(c), k=lever["dba"])
            if lever.get("qe"):
                q = alpha_qe(normalized(q), normalized(c), k=lever["qe"])
            row[f"{p} top-1"], row[f"{p} top-5"] = accuracy(q, truth, c, c_skus, lever.get("how", "max"))
        return row


ALL = ("A0", "A", "B", "unseen A")


def zero_shot_rows(pr: Protocols, bank: Bank) -> list[dict]:
    return [{"row": "lite0 ImageNet zero-shot (224)", **pr.score(bank, "lite0", LITE0, ALL)}]


def view_rows(pr: Protocols, bank: Bank) -> list[dict]:
    """Views of the query (all protocols) and of the catalog photos (iconic catalogs: views of B's
    2,721 photos cost 6x its embedding time for a catalog that already shows each SKU many ways).
    3 views are measured on val only."""
    rows = []
    for n in (3, 6) if pr.split == "val" else (6,):
        rows.append({"row": f"+ query views (TTA), mean of {n}", **pr.score(bank, "lite0", LITE0, ALL, tta=n)})
        rows.append({"row": f"+ {n} views of query and catalog (index --views {n})",
                     **pr.score(bank, "lite0", LITE0, ("A0", "A", "unseen A"), tta=n, catalog_views=n)})
        for fuse in ("mean", "max"):
            rows.append({"row": f"+ catalog views, {fuse} of {n}",
                         **pr.score(bank, "lite0", LITE0, ("A0", "A", "unseen A"), catalog_views=n, catalog_fuse=fuse)})
    return rows


def rerank_rows(pr: Protocols, bank: Bank) -> list[dict]:
    rows = [{"row": f"+ alpha-QE k={k}", **pr.score(bank, "lite0", LITE0, ALL, qe=k)} for k in (1, 2)]
    rows += [{"row": f"+ DBA k={k}", **pr.score(bank, "lite0", LITE0, ALL, dba=k)} for k in (1, 2)]
    rows.append({"row": "SKU = mean of its top-3 photos", **pr.score(bank, "lite0", LITE0, ("B",), how="mean-top")})
    rows.append({"row": "DBA k=2 + SKU = mean of its top-3", **pr.score(bank, "lite0", LITE0, ("B",), dba=2, how="mean-top")})
    return rows


BACKBONES = (("lite2 (260)", "lite2-260", "tf_efficientnet_lite2"),
             ("lite2 (448)", "lite2-448", "tf_efficientnet_lite2@448"),
             ("lite0 (224) + lite2 (448)", "lite0+lite2-448", "tf_efficientnet_lite0+tf_efficientnet_lite2@448"))


def backbone_rows(pr: Protocols, bank: Bank) -> list[dict]:
    """Bigger backbones and the ensemble on the iconic catalogs (B's 2,721 photos at 448 px would
    take 12 min per model on 2 cores), then (val only) the ensemble with the index's 6 views. What
    each costs: the ``cost`` part."""
    rows = []
    # On test, only the ensemble: lite2 at 448 alone costs as much, and 6 views of it six times that.
    for name, tag, model in BACKBONES if pr.split == "val" else BACKBONES[-1:]:
        rows.append({"row": f"{name} ImageNet zero-shot", **pr.score(bank, tag, model, ("A0", "A", "unseen A"))})
    if pr.split == "val":
        name, tag, model = BACKBONES[-1]
        rows.append({"row": f"{name} + 6 views", **pr.score(bank, tag, model, ("A0", "A"), tta=6, catalog_views=6)})
    return rows


def training_rows(pr: Protocols, bank: Bank, out: Path, device: str) -> list[dict]:
    """Heads only (frozen backbone, cached features: the CPU recipe) with each augmentation lever.
    The augmented variants run on A0 only: caching 4 customer-photo views of B's 2,721 photos takes
    about 20 min on 2 busy cores, and on A0, where they are cheapest, training does not help at all."""
    base = TrainConfig(train="", val=str(pr.all.val), out="", device=device, freeze_backbone=True,
                       epochs=30, lr_steps=(20,), accumulate=1)
    groups = ((("A0",), pr.all.catalog_a, pr.all.val), (("A", "B"), pr.all.catalog_b, pr.all.val),
              (("unseen A",), pr.even.catalog_b, pr.even.val))
    variants = (("photos only (features cached once, no augmentation)", {}, groups),
                ("customer-photo augmentation, 4 views, no flips", dict(augment="customer", views=4, hflip=False),
                 groups[:1]),
                ("customer-photo augmentation, 4 views, flips", dict(augment="customer", views=4, hflip=True),
                 groups[:1]))
    rows = []
    for name, options, trained_for in variants:
        slug = "-".join(f"{k}{v}" for k, v in options.items()) or "standard"
        row = {"row": f"heads only, {name}"}
        for protocols, train, val in trained_for:
            run, minutes = run_training(replace(base, train=str(train), val=str(val),
                                                out=str(out / f"heads-{protocols[0][:2].strip()}-{slug}"), **options))
            row |= pr.score(bank, f"{run.name}", str(run / "model.pt"), protocols)
            row[f"{protocols[0]} train min"] = round(minutes, 1)
        rows.append(row)
    return rows


def trained_lever_rows(pr: Protocols, bank: Bank, out: Path) -> list[dict]:
    """The levers that won on the untrained embedder, on the heads-only model trained on train +
    iconic photos (the ``training`` part's run): do they still add on a trained embedder?"""
    run = out / "heads-A-standard"
    tag, model = run.name, str(run / "model.pt")
    return [{"row": "heads only (A, B)", **pr.score(bank, tag, model, ("A", "B"))},
            {"row": "heads only + 6 views on both sides", **pr.score(bank, tag, model, ("A", "B"), tta=6, catalog_views=6)},
            {"row": "heads only + 6 query views", **pr.score(bank, tag, model, ("A", "B"), tta=6)},
            {"row": "heads only, SKU = mean of its best 3 photos", **pr.score(bank, tag, model, ("B",), how="mean-top")}]


def finetuned_rows(pr: Protocols, bank: Bank, out: Path, device: str) -> list[dict]:
    """The same levers on the best CPU model: the training ablation's CPU preset (stages 5-7 of lite0
    trained at 448 px, 10 epochs; its finetunes left out, they did not help) on train + iconic photos.
    About 70 min of training on 2 cores, then 6 views of every photo at 448 px."""
    config = TrainConfig(train=str(pr.all.catalog_b), val=str(pr.all.val), out=str(out / "finetune-448"),
                         device=device, img_size=448, resize=512,
                         **{**PRESETS["cpu"], "balanced_epochs": 0, "accuracy_epochs": 0})
    run, minutes = run_training(config)
    tag, model = run.name, str(run / "model.pt")
    levers = (("CPU preset at 448", ("A", "B"), {}), ("+ SKU = mean of its best 3 photos", ("B",), {"how": "mean-top"}),
              ("+ DBA k=1", ("A", "B"), {"dba": 1}), ("+ 6 query views", ("A", "B"), {"tta": 6}),
              ("+ 6 views on both sides", ("A", "B"), {"tta": 6, "catalog_views": 6}),
              ("+ 6 views on both sides, SKU = mean of its best 3", ("B",), {"tta": 6, "catalog_views": 6, "how": "mean-top"}))
    rows = []
    for name, protocols, lever in levers:  # cheapest first; each row logged as it is done (views take long at 448)
        rows.append({"row": name, **pr.score(bank, tag, model, protocols, **lever)})
        log.info("%s", rows[-1])
    rows[0]["train min"] = round(minutes, 1)
    return rows


def cost_rows(pr: Protocols, photos: int = 96) -> list[dict]:
    """What each embedder costs, side by side in one run on a quiet machine: photos/s of
    ``embed_files`` (decoding included) on ONNX Runtime fp32, the index's runtime on a CPU, on the
    first ``photos`` test photos."""
    paths = [it.path for it in read_listing(pr.all.test).items[:photos]]
    rows = []
    for name, model, views in (("lite0 (224)", LITE0, 1), ("lite0 (224), 6 views", LITE0, 6),
                               *((n, m, 1) for n, _, m in BACKBONES), (BACKBONES[-1][0] + ", 6 views", BACKBONES[-1][2], 6)):
        encoder = create_encoder(model, runtime="onnx", precision="fp32")
        embed_files(encoder, paths[:8], views=views)  # warm-up
        done = embed_files(encoder, paths, views=views)
        rows.append({"row": name, "photos/s": round(done.images_per_second, 1), "dim": encoder.config.embed_dim})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "accuracy-levers")
    parser.add_argument("--split", choices=("val", "test"), default="val")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of {PARTS}")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("faiss", "prodsearch.retrieval.embedding", "prodsearch.retrieval.weights"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    parts = [p for p in args.only.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
    pr, bank = Protocols(args.dataset, args.out, args.split), Bank(args.out)
    makers = {"zero-shot": lambda: zero_shot_rows(pr, bank), "views": lambda: view_rows(pr, bank),
              "rerank": lambda: rerank_rows(pr, bank), "backbones": lambda: backbone_rows(pr, bank),
              "training": lambda: training_rows(pr, bank, args.out, args.device), "cost": lambda: cost_rows(pr),
              "trained-levers": lambda: trained_lever_rows(pr, bank, args.out),
              "finetuned": lambda: finetuned_rows(pr, bank, args.out, args.device)}
    results = {"split": args.split, "machine": cpu_line()}
    print(results["machine"], flush=True)
    columns = ["row"] + [f"{p} top-{k}" for p in ALL for k in (1, 5)]
    for part in parts:
        start = time.perf_counter()
        results[part] = makers[part]()
        log.info("%s: %.1f min", part, (time.perf_counter() - start) / 60)
        print(markdown_table(results[part], [c for c in columns + sorted({k for r in results[part] for k in r}
                                                                        - set(columns)) if any(c in r for r in results[part])]),
              flush=True)
    (args.out / f"results-{args.split}-{'-'.join(parts)}.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
