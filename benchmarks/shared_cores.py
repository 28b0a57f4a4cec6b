"""Torch on shared cores (issue 27, item 23): training and embedding, alone and beside one busy core.

Each measurement runs in a fresh process (OpenMP reads its settings when torch loads), on the
demo's synthetic shop, so the benchmark needs no dataset:
- ``train``: the demo's training (heads only, 20 epochs over cached backbone features): the seconds
  of the head's epochs and of the rest ("feature caching": the model's set-up and the backbone over
  every photo);
- ``embed_files``: the torch runtime (fp32, CPU) over the shop's photos, decoding threads included.

Settings, alternated within each round so that a noisy machine slows them alike:
- ``before``: what torch did before prodsearch chose (libgomp's default: idle threads spin
  about 300,000 times, then sleep);
- ``after``: what prodsearch does now (``OMP_WAIT_POLICY=PASSIVE`` unless the user set it);
- ``1 thread``: ``OMP_NUM_THREADS=1``, the workaround the issue measured;
each with no neighbour added and beside ``python3 -c "while True: pass"`` (one busy core). The
load average is in the table: a machine shared with other work is not quiet without a neighbour.

    python benchmarks/shared_cores.py                 # 2 rounds, the demo's shop (48 SKUs), 128 photos
    python benchmarks/shared_cores.py --rounds 1 --skus 16 --photos 64 --settings before after
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cli_startup import cpu_line

from prodsearch.eval.report import markdown_table

SETTINGS = ("before", "after", "1 thread")
WORKLOADS = ("train", "embed_files")


def child(workload: str, setting: str, skus: int, photos: int) -> dict[str, float]:
    """Run one workload under one setting in this (fresh) process, on the demo's shop written afresh
    (same bytes every time); torch is loaded only after the setting is made."""
    import prodsearch  # noqa: F401  (sets the OpenMP environment, as every prodsearch command does)

    if setting == "before":
        os.environ.pop("OMP_WAIT_POLICY", None)  # undo prodsearch's choice before torch loads
    elif setting == "1 thread":
        os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    from prodsearch.demo import TRAIN_SNAPSHOTS, demo_train_config
    from prodsearch.retrieval.embedding import embed_files
    from prodsearch.retrieval.encoders import create_encoder
    from prodsearch.retrieval.training import train
    from prodsearch.synthetic import write_synthetic_dataset

    with tempfile.TemporaryDirectory() as tmp:
        dataset = write_synthetic_dataset(Path(tmp) / "data", n_skus=skus, train_snapshots_per_sku=TRAIN_SNAPSHOTS)
        out = {"threads": torch.get_num_threads()}
        if workload == "train":
            config = demo_train_config(dataset, Path(tmp) / "model")
            start = time.perf_counter()
            result = train(config)
            seconds = time.perf_counter() - start
            epochs = sum(e.seconds for e in result.history)
            out.update(seconds=seconds, epochs=epochs, caching=seconds - epochs)
        else:
            paths = sorted(str(p) for p in dataset.train_dir.rglob("*.jpg"))[:photos]
            encoder = create_encoder(runtime="torch", device="cpu", precision="fp32")
            embed_files(encoder, paths[:16])  # warm-up
            start = time.perf_counter()
            embed_files(encoder, paths)
            seconds = time.perf_counter() - start
            out.update(seconds=seconds, per_second=len(paths) / seconds, photos=len(paths))
    out["load"] = os.getloadavg()[0]
    return out


def measure(workload: str, setting: str, args: argparse.Namespace) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT")}
    done = subprocess.run([sys.executable, __file__, "--child", workload, setting,
                           "--skus", str(args.skus), "--photos", str(args.photos)], env=env, check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    parser.add_argument("--skus", type=int, default=48, help="the demo shop's size (training: 7 photos a SKU)")
    parser.add_argument("--photos", type=int, default=128, help="photos embed_files embeds")
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--child", nargs=2, metavar=("WORKLOAD", "SETTING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.skus, args.photos)))
        return
    print(cpu_line())
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    results: dict[tuple[str, str, str], list[dict]] = {}
    for _ in range(args.rounds):
        for load in ("none", "one busy core"):
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load != "none" else None
            try:
                for workload in args.workloads:
                    for setting in args.settings:
                        r = measure(workload, setting, args)
                        results.setdefault((workload, load, setting), []).append(r)
                        print(workload, load, setting, json.dumps(r), flush=True)
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    rows = []
    for (workload, load, setting), runs in results.items():
        median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        row = {"workload": workload, "neighbour": load, "setting": setting, "torch threads": int(median["threads"]),
               "load average": f"{median['load']:.1f}"}
        if workload == "train":
            row.update({"feature caching s": f"{median['caching']:.1f}", "head epochs s": f"{median['epochs']:.1f}",
                        "total s": f"{median['seconds']:.1f}"})
        else:
            row.update({"photos/s": f"{median['per_second']:.1f}", "total s": f"{median['seconds']:.1f}"})
        rows.append(row)
    for workload in args.workloads:
        print()
        print(markdown_table([r for r in rows if r["workload"] == workload]))


if __name__ == "__main__":
    main()
