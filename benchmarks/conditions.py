"""Issue 28: every lever and recipe over several conditions built from real photos, side by side.

A choice made on one condition can lose on a shop it was not made on (an unseen shop lost 8 points
that way), so a lever or recipe is a default only if it is no worse than plain lite0 fp32 by more
than half a point on *every* condition here. Conditions, on Grocery Store (81 SKUs):

- **A0**: catalog = the 81 iconic photos, training on those only (one photo per SKU);
- **A**, **B**: catalog = iconic (A) or iconic + train photos (B), training on train + iconic;
- **unseen A**: trained on the even-id SKUs, scored on the odd ones against their iconic photos;
- **A small**, **B small**: A and B with the query photos made small and blurry
  (:mod:`prodsearch.retrieval.degrade`: short side 96-128 px, blur, JPEG 50-70: a far shelf photo or
  a video crop);
- **few**, **few small**: catalog = iconic + 3 train photos per SKU (4 per SKU, like a web catalog),
  training on those only; queries as they are, or small.

Queries: the val split (``--split val``: every choice is made there) or the test split (``--split
test``: the final table). Untrained rows run the index's runtime (ONNX Runtime fp32, or int8 as
``--precision int8`` builds it, calibrated on the condition's catalog); trained rows train with
:func:`prodsearch.retrieval.training.train` (a finished run in the output folder is reused) and
are scored on the same photos. Embeddings are cached under ``--out``.

    python benchmarks/conditions.py --split val
    python benchmarks/conditions.py --split test --rows plain,whole-224
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from accuracy_levers import accuracy
from cli_startup import cpu_line
from train_grocery_store import DEFAULT_DATASET, ROOT, run_training

from prodsearch.catalog.csv_writer import write_catalog_csv
from prodsearch.catalog.listing import read_listing
from prodsearch.eval.grocery_store import write_grocery_store_manifests
from prodsearch.eval.report import markdown_table
from prodsearch.retrieval.degrade import degraded_copy
from prodsearch.retrieval.embedding import embed_files
from prodsearch.retrieval.encoders import create_encoder
from prodsearch.retrieval.training import TrainConfig

log = logging.getLogger("conditions")
LITE0 = "tf_efficientnet_lite0"
FEW_PER_SKU = 3  # train photos per SKU beside the iconic one in the "few" catalog
WORSE = 0.005  # a default may lose at most half a point on any condition


@dataclass(frozen=True)
class Condition:
    name: str
    train: str  # the training set trained rows use: iconic, all, even, few
    catalog: str  # manifest key
    queries: str  # "all" or "odd" (the unseen SKUs)
    small: bool = False


CONDITIONS = (Condition("A0", "iconic", "iconic", "all"), Condition("A", "all", "iconic", "all"),
              Condition("B", "all", "b", "all"), Condition("unseen A", "even", "odd-iconic", "odd"),
              Condition("A small", "all", "iconic", "all", True), Condition("B small", "all", "b", "all", True),
              Condition("few", "few", "few", "all"), Condition("few small", "few", "few", "all", True))


class Photos:
    """The manifests every condition reads: catalogs, training sets and (small) queries of a split."""

    def __init__(self, dataset: Path, out: Path, split: str):
        folder = out / "manifests"
        every = write_grocery_store_manifests(dataset, folder)
        even = write_grocery_store_manifests(dataset, folder, classes="even")
        odd = write_grocery_store_manifests(dataset, folder, classes="odd")
        few = _few(every.catalog_b, folder / "catalog_few.csv")
        self.catalogs = {"iconic": every.catalog_a, "b": every.catalog_b, "odd-iconic": odd.catalog_a, "few": few}
        self.training = {"iconic": (every.catalog_a, every.val), "all": (every.catalog_b, every.val),
                         "even": (even.catalog_b, even.val), "few": (few, every.val)}
        queries = every.val if split == "val" else every.test
        self.queries = {False: queries, True: _degraded(queries, out / "degraded" / split)}
        self.odd_skus = {it.sku for it in read_listing(odd.catalog_a).items}
        # What a shop has without labelling anything: customer photos (the train split's, unlabelled).
        unlabelled = [it for it in read_listing(every.catalog_b).items if "Iconic" not in it.path.name][::5]
        plain = write_catalog_csv(folder / "unlabelled.csv", [{"image": str(it.path), "sku": it.sku}
                                                             for it in unlabelled], columns=())
        self.unlabelled = {False: plain, True: _degraded(plain, out / "degraded" / "unlabelled")}


def _few(catalog_b: Path, path: Path) -> Path:
    """Iconic + FEW_PER_SKU train photos of each SKU (drawn with a fixed seed)."""
    items = read_listing(catalog_b).items
    rng, rows = np.random.default_rng(0), []
    for sku in sorted({it.sku for it in items}):
        own = [it for it in items if it.sku == sku]
        iconic = [it for it in own if "Iconic" in it.path.name]
        photos = [it for it in own if it not in iconic]
        picked = [photos[i] for i in sorted(rng.choice(len(photos), FEW_PER_SKU, replace=False))]
        rows += [{"image": str(it.path), "sku": sku} for it in iconic + picked]
    return write_catalog_csv(path, rows, columns=())


def _degraded(queries: Path, folder: Path) -> Path:
    """The query photos made small and blurry, one fixed seed per photo."""
    rows = [{"image": str(degraded_copy(it.path, folder / f"{i:05d}-{it.path.stem}.jpg", seed=i)), "sku": it.sku}
            for i, it in enumerate(read_listing(queries).items)]
    return write_catalog_csv(folder.with_suffix(".csv"), rows, columns=())


@dataclass
class Row:
    """One lever or recipe. Untrained: ``model`` (a name for ``create_encoder``, or a callable giving
    an encoder for a condition), ``views``, ``precision``. Trained: ``train`` = TrainConfig fields, the
    trained model scored with ``views``; ``sets`` limits the training sets it runs on."""

    name: str
    model: str | Callable[[Condition, Bench], Any] = LITE0
    views: int = 1
    precision: str = "fp32"
    train: dict[str, Any] | None = None
    sets: tuple[str, ...] = ("iconic", "all", "even", "few")
    why_not: str = ""  # why the training sets left out are left out
    embed_options: dict[str, Any] = field(default_factory=dict)  # for embed_files, e.g. upsample_crops


def _crow(c: Condition, bench: "Bench") -> Any:
    from prodsearch.retrieval.factory import create_embedder

    return create_encoder(create_embedder(LITE0, pooling="crow"), runtime="onnx", precision="fp32")


def _adabn(c: Condition, bench: "Bench") -> Any:
    """lite0 with BatchNorm statistics re-estimated on unlabelled customer photos of the query
    condition (small ones for the small conditions)."""
    from prodsearch.retrieval.adabn import adapt_batchnorm
    from prodsearch.retrieval.factory import create_embedder

    photos = [str(it.path) for it in read_listing(bench.photos.unlabelled[c.small]).items]
    return create_encoder(adapt_batchnorm(create_embedder(LITE0), photos), runtime="onnx", precision="fp32")


# Training the backbone runs at about 4-10 photos/s on 2 shared cores: 10 epochs of the 2,721 photos
# of A/B take 1-2 hours, so those rows train on the small training sets only.
SLOW = "backbone training on the large training sets (A/B 2,721 photos, unseen 1,391) takes 1-2 h per run on 2 cores"
SLOW_DEGRADE = "1 photo per SKU (A0) is refused by auto; unseen: 1,391 photos, about an hour of training on 2 cores"
ROWS = {r.name: r for r in (
    Row("plain"),
    Row("int8", precision="int8"),
    Row("lite0@160", model=f"{LITE0}@160"),
    Row("lite0@192", model=f"{LITE0}@192"),
    Row("lite0@288", model=f"{LITE0}@288"),
    Row("views 6", views=6),
    Row("lite0+lite2@448", model=f"{LITE0}+tf_efficientnet_lite2@448"),
    Row("views 6 small photos uncropped", views=6, embed_options={"upsample_crops": False}),
    Row("CroW pooling", model=_crow),
    Row("AdaBN on unlabelled customer photos", model=_adabn),
    Row("whole-224", train={}, sets=("iconic", "few"), why_not=SLOW),
    Row("heads only", train=dict(freeze_backbone=True, epochs=30, lr_steps=(20,), accumulate=1)),
    Row("heads only + 4 degraded views", train={"freeze_backbone": True, "epochs": 30, "lr_steps": (20,),
                                                "accumulate": 1, "augment": "degrade", "views": 4}),
    Row("customer-photos", train=dict(frozen_stages=4, img_size=448, resize=512, epochs=10, lr_steps=(7,)),
        sets=("iconic",), why_not=SLOW),
    Row("whole-224 + degrade augmentation", train={"augment": "degrade"}, sets=("few", "all"), why_not=SLOW_DEGRADE),
    Row("whole-224 + customer augmentation", train=dict(augment="customer", hflip=False), sets=("few",),
        why_not=SLOW),
)}


class Bench:
    """Embeddings of manifests per (row tag, manifest, views), cached as .npy files."""

    def __init__(self, photos: Photos, out: Path, device: str):
        self.photos, self.out, self.device, self.encoders = photos, out, device, {}
        self.train_minutes: dict[str, float] = {}

    def vectors(self, tag: str, make: Callable[[], Any], manifest: Path, views: int,
                **options: Any) -> tuple[np.ndarray, np.ndarray]:
        items = read_listing(manifest).items
        path = self.out / "embeddings" / tag / f"{manifest.stem}-v{views}.npy"
        if not path.is_file():
            if tag not in self.encoders:
                self.encoders = {tag: make()}  # one model in memory at a time
            done = embed_files(self.encoders[tag], [it.path for it in items], views=views, **options)
            if len(done.positions) != len(items):
                raise SystemExit(f"{len(items) - len(done.positions)} photos of {manifest} could not be read")
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, done.vectors)
        return np.load(path), np.array([it.sku for it in items])

    def model_for(self, row: Row, c: Condition) -> tuple[str, Callable[[], Any]] | None:
        """(cache tag, encoder maker) of ``row`` on condition ``c``; None where it does not run."""
        if row.train is None:
            calibration = [str(it.path) for it in read_listing(self.photos.catalogs[c.catalog]).items]
            tag = row.name if row.precision == "fp32" else f"{row.name}-{c.catalog}"
            if callable(row.model):
                maker = row.model
                return f"{tag}-{'small' if c.small else 'plain'}", lambda: maker(c, self)
            return tag, lambda: create_encoder(row.model, runtime="onnx", precision=row.precision,
                                               calibration=calibration if row.precision == "int8" else ())
        if c.train not in row.sets:
            return None
        slug = row.name.replace(" + ", "+").replace(" ", "-")
        train, val = self.photos.training[c.train]
        config = TrainConfig(train=str(train), val=str(val), out=str(self.out / "runs" / f"{slug}-{c.train}"),
                             device=self.device, **row.train)
        run, minutes = run_training(config)
        self.train_minutes[f"{row.name}/{c.train}"] = round(minutes, 1)
        return f"{slug}-{c.train}", lambda: create_encoder(str(run / "model.pt"), runtime="onnx", precision="fp32")

    def score(self, row: Row) -> dict[str, Any]:
        out: dict[str, Any] = {"row": row.name}
        start = time.perf_counter()
        for c in CONDITIONS:
            made = self.model_for(row, c)
            if made is None:
                continue
            tag, make = made
            catalog, catalog_skus = self.vectors(tag, make, self.photos.catalogs[c.catalog], row.views,
                                                 **row.embed_options)
            queries, truth = self.vectors(tag, make, self.photos.queries[c.small], row.views, **row.embed_options)
            if c.queries == "odd":
                keep = np.isin(truth, list(self.photos.odd_skus))
                queries, truth = queries[keep], truth[keep]
            out[c.name], out[f"{c.name} top-5"] = accuracy(queries, truth, catalog, catalog_skus)
        trained = {k: v for k, v in self.train_minutes.items() if k.startswith(f"{row.name}/")}
        out["train min"] = round(sum(trained.values()), 1) if trained else 0.0
        out["min"] = round((time.perf_counter() - start) / 60, 1)
        return out


def verdicts(rows: list[dict], baseline: str = "plain") -> None:
    """Add to each row its largest loss against ``baseline`` and whether it may be a default."""
    base = next(r for r in rows if r["row"] == baseline)
    for r in rows:
        deltas = {c.name: r[c.name] - base[c.name] for c in CONDITIONS if c.name in r and c.name in base}
        worst = min(deltas, key=deltas.get) if deltas else None
        missing = [c.name for c in CONDITIONS if c.name not in r]
        if r is base:
            r["default?"] = "the reference"
        elif missing:
            r["default?"] = f"not measured on {', '.join(missing)}"
        elif deltas[worst] < -WORSE:
            r["default?"] = f"no: {deltas[worst] * 100:+.1f} pt on {worst}"
        else:
            gain = max(deltas, key=deltas.get)
            r["default?"] = f"yes: never below plain (worst {deltas[worst] * 100:+.1f} on {worst}, best " \
                            f"{deltas[gain] * 100:+.1f} on {gain})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "conditions")
    parser.add_argument("--split", choices=("val", "test"), default="val")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows of: {', '.join(ROWS)}")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("faiss", "prodsearch.retrieval.embedding", "prodsearch.retrieval.weights", "prodsearch.retrieval.encoders"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    names = [n for n in args.rows.split(",") if n]
    unknown = set(names) - set(ROWS)
    if unknown:
        parser.error(f"unknown rows {sorted(unknown)}; choose from {', '.join(ROWS)}")
    if "plain" not in names:
        names.insert(0, "plain")  # the reference every verdict compares with
    bench = Bench(Photos(args.dataset, args.out, args.split), args.out, args.device)
    print(cpu_line(), flush=True)
    results_file = args.out / f"results-{args.split}.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    for name in names:
        row = ROWS[name]
        results[name] = bench.score(row) | ({"left out": row.why_not} if row.why_not else {})
        log.info("%s", results[name])
        results_file.write_text(json.dumps(results, indent=2) + "\n")
    rows = [results[n] for n in ROWS if n in results]
    verdicts(rows)
    columns = ["row"] + [c.name for c in CONDITIONS] + ["train min", "min", "default?"]
    print(markdown_table([{k: (f"{v:.3f}" if isinstance(v, float) and k in {c.name for c in CONDITIONS} else v)
                           for k, v in r.items()} for r in rows], columns))


if __name__ == "__main__":
    main()
