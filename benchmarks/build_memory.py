"""Peak memory of ``prodsearch index`` against catalog size: does it grow beyond the vector index?

Each build runs in a child process (its peak resident memory, VmHWM, is the figure) over a generated
catalog of distinct tiny photos (8x8 PNG, 10 per SKU). The embedder is a stand-in made cheap for
this benchmark only, ``bench-standin``: the photo's 192 pixel values through a fixed random projection
to 512-d, L2-normalised; it is passed to ``build_index`` as an encoder and named in the manifest.
Everything else is what a real ``index`` does: listing, hashing, decoding, chunked commits to
SQLite, the vector index built from the stored vectors (``auto``: Flat below 100k, IVF-SQfp16 up to
2M), the folder published.

Rows: chunked (the default ``--chunk-size`` 50,000) at each size, one chunk (the whole catalog at
once: what ``index`` did before issue 17) at the smallest, and a build killed (SIGKILL) after its
first chunk and run again: how many photos the resumed run embedded.

    python benchmarks/build_memory.py                  # 100k and 1M rows (about 25 min on 2 cores)
    python benchmarks/build_memory.py --rows 100000    # one size
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from cli_startup import cpu_line  # noqa: E402

PER_SKU = 10
DIM = 512


class StandInEncoder:
    """The benchmark's embedder: pixels through a fixed random projection (no model, no torch)."""

    runtime, precision, device, batch_size, dim = "numpy", "fp32", "cpu", 256, DIM

    def __init__(self):
        from prodsearch.retrieval.config import EmbedderConfig

        self.config = EmbedderConfig("bench-standin", "random:seed=0", DIM, {
            "input_size": (3, 8, 8), "interpolation": "bilinear", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
            "crop_pct": 1.0, "crop_mode": "center"})
        self.projection = np.random.default_rng(0).normal(size=(3 * 8 * 8, DIM)).astype(np.float32)

    def encode(self, batch: np.ndarray) -> np.ndarray:
        x = batch.reshape(len(batch), -1) @ self.projection
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_catalog(folder: Path, rows: int) -> Path:
    """``rows`` distinct 8x8 PNG photos, 10 per SKU, and the CSV listing them (kept for reuse)."""
    csv = folder / f"catalog-{rows}.csv"
    if csv.is_file():
        return csv
    from PIL import Image

    rng = np.random.default_rng(rows)
    lines = ["image,sku"]
    for i in range(rows):
        sku = f"sku{i // PER_SKU:07d}"
        path = folder / "photos" / sku[:-3] / f"{i:08d}.png"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
        lines.append(f"{path.relative_to(folder)},{sku}")
    csv.write_text("\n".join(lines) + "\n")
    return csv


def child(catalog: Path, index_dir: Path, chunk_size: int) -> None:
    """One build, then its figures as JSON on stdout."""
    from prodsearch.indexer import build_index

    start = time.perf_counter()
    report = build_index(catalog, index_dir, model=StandInEncoder(), chunk_size=chunk_size, num_workers=0)
    snapshot = sum(p.stat().st_size for p in index_dir.glob("vectors-*.faiss"))
    status = Path("/proc/self/status").read_text()
    hwm = int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) * 1024
    print(json.dumps({"images": report.images, "resumed": report.resumed, "peak_bytes": hwm,
                      "vector_index_bytes": snapshot, "seconds": time.perf_counter() - start,
                      "db_bytes": (index_dir / "catalog.db").stat().st_size}))


def run_child(catalog: Path, index_dir: Path, chunk_size: int, crash: str | None = None) -> dict | None:
    env = {**os.environ, **({"PRODSEARCH_CRASH_AT": crash} if crash else {})}
    proc = subprocess.run([sys.executable, __file__, "--child", str(catalog), str(index_dir), str(chunk_size)],
                          capture_output=True, text=True, env=env)
    if crash:
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        return None
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--chunk-size", type=int, default=50_000)
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "out" / "build-memory")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]), int(args.child[2]))
        return
    print(cpu_line(), flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    print("| catalog rows | build | chunk | peak RSS | vector index | peak - index | catalog.db | embedded | resumed | min |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for rows in sorted(args.rows):
        catalog = make_catalog(args.work, rows)
        builds = [("chunked", args.chunk_size, None)]
        if rows == min(args.rows):
            builds.append(("one chunk (before issue 17)", rows, None))
        builds.append(("killed after chunk 1, run again", args.chunk_size, "build-chunk"))
        for name, chunk, crash in builds:
            index_dir = args.work / f"idx-{rows}"
            shutil.rmtree(index_dir, ignore_errors=True)
            for partial in args.work.glob(f".idx-{rows}.*"):
                shutil.rmtree(partial)
            if crash:
                run_child(catalog, index_dir, chunk, crash)
            r = run_child(catalog, index_dir, chunk)
            gb = 1024 ** 3
            print(f"| {rows:,} | {name} | {chunk:,} | {r['peak_bytes'] / gb:.2f} GB | {r['vector_index_bytes'] / gb:.2f} GB "
                  f"| {(r['peak_bytes'] - r['vector_index_bytes']) / gb:.2f} GB | {r['db_bytes'] / gb:.2f} GB "
                  f"| {r['images'] - r['resumed']:,} | {r['resumed']:,} | {r['seconds'] / 60:.1f} |", flush=True)
        shutil.rmtree(args.work / f"idx-{rows}", ignore_errors=True)


if __name__ == "__main__":
    main()
