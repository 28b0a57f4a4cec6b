"""Server memory under concurrent searches of large photos (issue 27, item 16): the process's RSS
before, at its peak and after 4 concurrent requests of N PNGs of S x S pixels, in process (the app
over FastAPI's TestClient, so the RSS is the server's own). Gradient PNGs: small files, many pixels.

    python benchmarks/serve_memory.py                      # the cases below, with memory given back
    python benchmarks/serve_memory.py --no-give-back       # the same without malloc_trim, to compare

Rows of 8 photos of 6000 px are over the per-request pixel cap: they measure the 413's cost.
"""

from __future__ import annotations

import argparse
import gc
import io
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

CASES = [(6000, 1), (6000, 8), (2400, 8)]  # (side, photos per request)
CLIENTS = 4


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def gradient_png(side: int) -> bytes:
    ramp = np.linspace(0, 255, side, dtype=np.uint8)
    pixels = np.stack([np.tile(ramp, (side, 1)), np.tile(ramp[:, None], (1, side)),
                       np.full((side, side), 90, np.uint8)], -1)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG", compress_level=1)
    return out.getvalue()


def run_case(client, side: int, per_request: int) -> dict:
    png = gradient_png(side)
    gc.collect()
    before, peak, done, codes = rss_mb(), [rss_mb()], threading.Event(), []

    def watch():
        while not done.wait(0.02):
            peak[0] = max(peak[0], rss_mb())

    def search():
        files = [("image", (f"{i}.png", png, "image/png")) for i in range(per_request)]
        codes.append(client.post("/v1/search", files=files).status_code)

    watcher, start = threading.Thread(target=watch), time.perf_counter()
    watcher.start()
    clients = [threading.Thread(target=search) for _ in range(CLIENTS)]
    for t in clients:
        t.start()
    for t in clients:
        t.join()
    seconds = time.perf_counter() - start
    time.sleep(1.0)
    done.set()
    watcher.join()
    gc.collect()
    return {"photos": f"{CLIENTS} x {per_request} PNG of {side} px", "status": ",".join(map(str, sorted(set(codes)))),
            "RSS before MB": before, "RSS peak MB": peak[0], "RSS after MB": rss_mb(), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/prodsearch-serve-memory"))
    parser.add_argument("--no-give-back", action="store_true", help="skip malloc_trim after large requests")
    parser.add_argument("--build", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from fastapi.testclient import TestClient

    index_dir = args.work / "idx"
    if args.build:  # the tests' tiny catalog; they import torch, whose memory would count in the server's RSS
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import write_folder_catalog

        from prodsearch.indexer import build_index
        from prodsearch.retrieval import create_embedder

        build_index(write_folder_catalog(args.work / "catalog", ["a", "b", "c"]), index_dir,
                    model=create_embedder(img_size=64), num_workers=0)
        return
    from prodsearch.serve import photos
    from prodsearch.serve.app import create_app
    from prodsearch.serve.server import open_service
    from prodsearch.serve.service import ServeSettings

    if not (index_dir / "manifest.json").is_file():
        subprocess.run([sys.executable, __file__, "--work", str(args.work), "--build"], check=True)
    if args.no_give_back:
        photos.TRIM_AFTER_PIXELS = float("inf")
    service = open_service(ServeSettings(index_dir, max_upload_mb=50))
    with TestClient(create_app(service)) as client:
        small = io.BytesIO()
        Image.new("RGB", (320, 240), (200, 120, 40)).save(small, "JPEG")
        client.post("/v1/search", files=[("image", ("w.jpg", small.getvalue(), "image/jpeg"))])  # warm
        rows = [run_case(client, side, n) for side, n in CASES]
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(f"{v:.0f}" if isinstance(v, float) and k != "seconds" else
                                f"{v:.1f}" if isinstance(v, float) else str(v) for k, v in row.items()) + " |")


if __name__ == "__main__":
    main()
