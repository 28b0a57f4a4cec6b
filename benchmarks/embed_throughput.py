"""Embedding throughput per runtime, side by side in one run, and what a cold command costs (issue 13).

Rows, all on the same photos in the same process:
- the model alone on ready arrays: torch fp32, torch bf16 (where the CPU has AVX512-BF16/AMX or on a
  GPU), ONNX Runtime fp32 and int8 (calibrated on 64 train photos), at several batch sizes;
  the runtimes alternate within each round, so a noisy machine slows them alike;
- prodsearch's ``embed_files`` pipeline (JPEG decoding in threads overlapping the model) per runtime,
  at that runtime's default batch, with 0 and the default number of decoding threads;
- a naive single-process loop (timm transform, torch fp32, one batch after another) as the baseline;
- start-up: wall time and peak memory (``/usr/bin/time``) of ``prodsearch --help`` and of a cold
  ``prodsearch query PHOTO --index DIR`` (median of ``--runs``), and the p50 of warm single-photo
  queries. Photos: Grocery Store test photos (real phone JPEGs).

    python benchmarks/embed_throughput.py                        # CPU, 512 photos, lite0 at 224
    python benchmarks/embed_throughput.py --device cuda --photos 4096 --batch 128 256
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from cli_startup import cpu_line, prodsearch_command
from prodsearch.catalog.csv_writer import write_catalog_csv
from prodsearch.eval.report import markdown_table
from prodsearch.indexer.build import build_index
from prodsearch.indexer.product_index import ProductIndex
from prodsearch.retrieval.embedding import default_num_workers, embed_files
from prodsearch.retrieval.encoders import create_encoder
from prodsearch.retrieval.factory import create_embedder
from prodsearch.retrieval.images import load_image
from prodsearch.retrieval.runtime import describe

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATASET = ROOT.parent / "shared" / "datasets" / "grocery-store"


def photos(dataset: Path, n: int, split: str = "test") -> list[Path]:
    found = sorted((dataset / "dataset" / split).rglob("*.jpg"))
    if len(found) < n:
        raise SystemExit(f"{dataset}: {len(found)} {split} photos, {n} asked for")
    return found[:: len(found) // n][:n]


def naive_loop(embedder, paths: list[Path], batch: int) -> float:
    """Decode and embed in one process, torch float32, no overlap: the baseline a first script gets."""
    import timm.data
    import torch

    config = {k: tuple(v) if isinstance(v, list) else v for k, v in embedder.data_config.items()}
    transform = timm.data.create_transform(**config, is_training=False)
    model = embedder.eval()
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(paths), batch):
            model(torch.stack([transform(load_image(p)) for p in paths[i:i + batch]]))
    return len(paths) / (time.perf_counter() - start)


def model_alone(encoder, batch: int, seconds: float) -> float:
    """Images/s of ``encoder.encode`` on one ready batch; the first call warms up and is not counted."""
    x = np.random.default_rng(0).standard_normal((batch, *encoder.config.data_config["input_size"]), dtype=np.float32)
    encoder.encode(x)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        encoder.encode(x)
        done += batch
    return done / (time.perf_counter() - start)


def encoders(embedder, device: str, calibration: list[Path]) -> dict[str, object]:
    """Every runtime and precision this machine can run the embedder on (int8 calibrated on
    ``calibration``, photos other than the measured ones)."""
    out = {"torch fp32": create_encoder(embedder, runtime="torch", device=device, precision="fp32")}
    bf16 = create_encoder(embedder, runtime="torch", device=device, precision="auto")
    if bf16.precision != "fp32":
        out[f"torch {bf16.precision}"] = bf16
    if device != "cuda":
        out["onnx fp32"] = create_encoder(embedder, runtime="onnx", precision="fp32")
        out["onnx int8"] = create_encoder(embedder, runtime="onnx", precision="int8", calibration=calibration)
    return out


def measured_command(args: list[str], runs: int) -> tuple[float, float]:
    """(median wall seconds, median peak MB) of ``prodsearch ARGS`` in fresh processes, one warm-up first."""
    walls, peaks = [], []
    for i in range(runs + 1):
        done = subprocess.run(["/usr/bin/time", "-f", "%e %M", *prodsearch_command(), *args], cwd="/tmp",
                              capture_output=True, text=True, check=True)
        wall, peak_kb = done.stderr.strip().splitlines()[-1].split()
        if i:
            walls.append(float(wall))
            peaks.append(int(peak_kb) / 1024)
    return statistics.median(walls), statistics.median(peaks)


def start_up_rows(paths: list[Path], runs: int, work: Path) -> list[dict]:
    """--help, a cold query on a 200-photo index built the default way, and warm single-photo queries."""
    rows = [{"image": str(p), "sku": p.parent.name} for p in paths[:200]]
    index_dir = work / "index"
    build_index(write_catalog_csv(work / "catalog.csv", rows), index_dir)
    rows = []
    for what, args in (("prodsearch --help", ["--help"]),
                       ("cold prodsearch query PHOTO --index DIR", ["query", str(paths[-1]), "--index", str(index_dir)])):
        wall, peak = measured_command(args, runs)
        rows.append({"what": what, "median wall s": wall, "median peak MB": peak})
    index = ProductIndex.open(index_dir)
    index.query(paths[-1:])
    times = []
    for photo in paths[-50:]:
        start = time.perf_counter()
        index.query([photo], num_workers=0)
        times.append(1000 * (time.perf_counter() - start))
    rows.append({"what": f"warm single-photo query p50 ({describe(index.encoder)})",
                 "median wall s": statistics.median(times) / 1000, "median peak MB": "-"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--photos", type=int, default=512)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32], help="batch sizes of the model-alone rows")
    parser.add_argument("--seconds", type=float, default=4.0, help="per model-alone measurement")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of them is shown")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each start-up command")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    paths = photos(args.dataset, args.photos)
    embedder = create_embedder(args.model)
    runtimes = encoders(embedder, args.device, photos(args.dataset, 64, "train"))
    print(cpu_line())
    print(f"{args.model} at {embedder.data_config['input_size'][-1]} px on {args.device}; {args.photos} photos; "
          f"decoding threads by default: {default_num_workers(args.photos)}\n", flush=True)
    alone: dict[tuple[str, int], float] = {}
    for _ in range(args.rounds):
        for batch in args.batch:
            for name, encoder in runtimes.items():
                rate = model_alone(encoder, batch, args.seconds)
                alone[name, batch] = max(rate, alone.get((name, batch), 0.0))
    rows = [{"what": "model alone", "runtime": name, "batch": batch, "threads": "-", "img/s": rate, "x model": "-"}
            for (name, batch), rate in alone.items()]
    for name, encoder in runtimes.items():
        for workers in sorted({0, 1, 2, default_num_workers(len(paths))}):
            result = embed_files(encoder, paths, num_workers=workers)
            rows.append({"what": "embed_files, decoding included", "runtime": name, "batch": encoder.batch_size,
                         "threads": workers, "img/s": result.images_per_second,
                         "x model": result.images_per_second / alone.get((name, encoder.batch_size), float("nan"))})
            print(markdown_table(rows[-1:]).splitlines()[-1], flush=True)
    rows.append({"what": "naive loop (timm transform, torch fp32)", "runtime": "torch fp32", "batch": 8,
                 "threads": 0, "img/s": naive_loop(embedder, paths, 8), "x model": "-"})
    print()
    print(markdown_table(rows))
    with tempfile.TemporaryDirectory(prefix="prodsearch-bench-") as tmp:
        print()
        print(markdown_table(start_up_rows(paths, args.runs, Path(tmp))))


if __name__ == "__main__":
    main()
