"""Embedding throughput: images/s with JPEG decoding included, and where the time goes.

Rows: a naive single-process loop (decode, resize, model, one photo after another in batches);
the model alone on ready tensors (float32 and bfloat16, several batch sizes); prodsearch's
``embed_files`` pipeline (decoding in DataLoader worker processes overlapping the model,
channels_last, the precision ``auto`` picks) with 0, 1 and 2 workers. Photos: Grocery Store test
photos (real phone JPEGs). The last line compares bfloat16 with float32 embeddings of the same photos.

    python benchmarks/embed_throughput.py                        # CPU, 512 photos, lite0 at 224
    python benchmarks/embed_throughput.py --device cuda --photos 4096 --batch 256 512
"""

from __future__ import annotations

import argparse
import logging
import platform
import time
from pathlib import Path

import numpy as np
import torch

from prodsearch.eval.report import markdown_table
from prodsearch.retrieval.device import inference_dtype, resolve_device
from prodsearch.retrieval.factory import create_embedder
from prodsearch.retrieval.embedding import embed_files, prepare
from prodsearch.retrieval.images import load_image
from prodsearch.retrieval.preprocess import build_transform

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATASET = ROOT.parent / "shared" / "datasets" / "grocery-store"


def photos(dataset: Path, n: int) -> list[Path]:
    found = sorted((dataset / "dataset" / "test").rglob("*.jpg"))
    if len(found) < n:
        raise SystemExit(f"{dataset}: {len(found)} test photos, {n} asked for")
    return found[:: len(found) // n][:n]


def naive_loop(embedder, paths: list[Path], device: torch.device, batch: int) -> float:
    """Decode and embed in one process, float32, no overlap: the baseline a first script gets."""
    transform = build_transform(embedder.data_config)
    model = embedder.to(device).eval()
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(paths), batch):
            x = torch.stack([transform(load_image(p)) for p in paths[i:i + batch]]).to(device)
            model(x).cpu()
    return len(paths) / (time.perf_counter() - start)


def model_alone(embedder, device: torch.device, batch: int, dtype: torch.dtype | None, seconds: float = 8.0) -> float:
    model = prepare(embedder, device)
    size = embedder.data_config["input_size"][-1]
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    done, start = 0, None
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        while start is None or time.perf_counter() - start < seconds:
            model(x).cpu()  # the first batch warms up and is not counted
            if start is None:
                start = time.perf_counter()
            else:
                done += batch
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--photos", type=int, default=512)
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 16, 32], help="batch sizes to try")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device = resolve_device(args.device)
    paths = photos(args.dataset, args.photos)
    embedder = create_embedder(args.model)
    auto = inference_dtype(device, "auto")
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{device}, {args.model} at {embedder.data_config['input_size'][-1]} px, auto precision: {auto or 'fp32'}")
    rows = [{"what": "naive single-process loop, fp32", "batch": args.batch[0], "workers": 0, "precision": "fp32",
             "img/s": naive_loop(embedder, paths, device, args.batch[0])}]
    print(markdown_table(rows), flush=True)
    precisions = {"fp32": None} | ({"bf16": torch.bfloat16} if auto is not None else {})
    best = {}
    for name, dtype in precisions.items():
        for batch in args.batch:
            rate = model_alone(embedder, device, batch, dtype)
            rows.append({"what": "model alone (tensors ready)", "batch": batch, "workers": "-", "precision": name,
                         "img/s": rate})
            print(markdown_table(rows[-1:]).splitlines()[-1], flush=True)
            if rate > best.get(name, (0, 0))[1]:
                best[name] = (batch, rate)
    vectors = {}
    for name in precisions:
        batch = best[name][0]
        for workers in (0, 1, 2):
            result = embed_files(embedder, paths, batch_size=batch, device=device, num_workers=workers, precision=name)
            vectors[name] = result.vectors
            rows.append({"what": "prodsearch embed_files (decode included)", "batch": batch, "workers": workers,
                         "precision": name, "img/s": result.images_per_second})
            print(markdown_table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(markdown_table(rows))
    if "bf16" in vectors:
        cos = np.sum(vectors["fp32"] * vectors["bf16"], axis=1)
        print(f"\nbf16 against fp32 embeddings of the same {len(cos)} photos: cosine min {cos.min():.5f}, "
              f"mean {cos.mean():.5f}")


if __name__ == "__main__":
    main()
