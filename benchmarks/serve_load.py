"""Load on ``prodsearch serve`` (issue 14): throughput and latency under concurrent clients, with
micro-batching on and off, against the in-process rates measured in the same run; a soak with a CLI
writer; FAISS search latency while the embedder runs.

The server runs on loopback over the Grocery Store protocol B catalog (iconic + train photos);
clients send real test-split photos (read into memory first), one photo per request, each client on
its own keep-alive connection, for ``--seconds`` or ``--requests`` per client, whichever ends first.
Clients share the machine's cores with the server, as a load generator on the same 2-core box does.

    python benchmarks/serve_load.py                       # the table (about 5 minutes)
    python benchmarks/serve_load.py --soak-minutes 10     # plus the soak (10 minutes more)
    python benchmarks/serve_load.py --threads-check       # plus search latency beside a busy embedder
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from prodsearch.catalog.listing import read_listing
from prodsearch.eval.grocery_store import write_grocery_store_manifests
from prodsearch.eval.report import markdown_table
from prodsearch.indexer.build import build_index
from prodsearch.indexer.product_index import ProductIndex
from prodsearch.retrieval.embedding import embed_files
from prodsearch.retrieval.runtime import describe

from cli_startup import cpu_line, prodsearch_command

log = logging.getLogger("serve_load")
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATASET = ROOT.parent / "shared" / "datasets" / "grocery-store"
sys.path.insert(0, str(ROOT / "tests"))
from serving import multipart, server  # noqa: E402  (the tests' way of starting a server and posting photos)


class Client(threading.Thread):
    """Sends searches one after another on one connection until ``deadline`` or ``limit`` requests."""

    def __init__(self, port: int, bodies: list[tuple[bytes, str]], offset: int, deadline: float, limit: int):
        super().__init__(daemon=True)
        self.port, self.bodies, self.offset, self.deadline, self.limit = port, bodies, offset, deadline, limit
        self.latencies: list[float] = []
        self.answers: list[tuple[int, dict]] = []  # (which body, the answer), in order
        self.errors: list[str] = []

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        i = self.offset
        while time.perf_counter() < self.deadline and len(self.latencies) + len(self.errors) < self.limit:
            body, content_type = self.bodies[i % len(self.bodies)]
            i += 1
            start = time.perf_counter()
            try:
                conn.request("POST", "/v1/search", body=body, headers={"Content-Type": content_type})
                response = conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as exc:
                self.errors.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                continue
            if response.status != 200:
                self.errors.append(f"{response.status}: {data[:200]!r}")
                continue
            self.latencies.append(time.perf_counter() - start)
            self.answers.append(((i - 1) % len(self.bodies), json.loads(data)))
        conn.close()


def run_clients(port: int, bodies: list, clients: int, seconds: float, limit: int,
                tick: Callable[[], None] | None = None) -> tuple[list[Client], float]:
    """``clients`` clients for ``seconds`` (or ``limit`` requests each); ``tick()`` once a second
    meanwhile. Returns the finished clients and the wall time."""
    start = time.perf_counter()
    threads = [Client(port, bodies, 997 * c, start + seconds, limit) for c in range(clients)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(1 if tick else 0.05)
        if tick:
            tick()
    return threads, time.perf_counter() - start


def summary(threads: list[Client], wall: float) -> dict:
    """Requests, errors, rate and latency percentiles of finished clients."""
    latencies = sorted(x for t in threads for x in t.latencies)
    q = np.percentile(latencies, [50, 95, 99]) * 1000 if latencies else [float("nan")] * 3
    return {"clients": len(threads), "requests": len(latencies), "errors": sum(len(t.errors) for t in threads),
            "req/s": len(latencies) / wall, "p50 ms": q[0], "p95 ms": q[1], "p99 ms": q[2],
            "first error": next((t.errors[0] for t in threads if t.errors), ""),
            "generation went back": sum(inconsistent(t.answers) for t in threads)}


def load(port: int, bodies: list, clients: int, seconds: float, limit: int) -> dict:
    return summary(*run_clients(port, bodies, clients, seconds, limit))


def inconsistent(answers: list[tuple[int, dict]]) -> int:
    """Answers of one client whose generation went backwards (each client asks one after another)."""
    generations = [a["generation"] for _, a in answers]
    return sum(b < a for a, b in zip(generations, generations[1:]))


WRK_SCRIPT = """
local bodies, n, counter = {}, tonumber(os.getenv("BODIES")), 0
init = function(args)
  for i = 0, n - 1 do
    local f = io.open(os.getenv("BODY_DIR") .. "/" .. i .. ".bin", "rb")
    bodies[i + 1] = f:read("*all")
    f:close()
  end
end
request = function()
  counter = counter + 1
  return wrk.format("POST", "/v1/search", {["Content-Type"] = os.getenv("CONTENT_TYPE")}, bodies[counter % n + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('RESULT {"requests": %d, "seconds": %f, "errors": %d, "p50": %f, "p95": %f, "p99": %f}\\n',
    summary.requests, summary.duration / 1e6, e.status + e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000))
end
"""
BOUNDARY = "prodsearch-bench-boundary"


def wrk_load(port: int, photos: list[bytes], clients: int, seconds: float, work: Path) -> dict:
    """The same load from wrk (C, one thread, one connection per client): the load generator takes
    a few per cent of a core instead of the third that Python clients take beside the server."""
    body_dir = work / "wrk-bodies"
    if not body_dir.is_dir():
        body_dir.mkdir(parents=True)
        for i, photo in enumerate(photos):
            (body_dir / f"{i}.bin").write_bytes(multipart([photo], BOUNDARY)[0])
    (work / "wrk.lua").write_text(WRK_SCRIPT)
    env = {"BODIES": str(len(photos)), "BODY_DIR": str(body_dir),
           "CONTENT_TYPE": f"multipart/form-data; boundary={BOUNDARY}", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(["wrk", "-t1", f"-c{clients}", f"-d{seconds:.0f}s", "--timeout", "60s", "-s",
                          str(work / "wrk.lua"), f"http://127.0.0.1:{port}"], capture_output=True, text=True, env=env)
    result = json.loads(out.stdout.split("RESULT ", 1)[1])
    return {"clients": clients, "requests": result["requests"], "errors": result["errors"],
            "req/s": result["requests"] / result["seconds"], "p50 ms": result["p50"], "p95 ms": result["p95"],
            "p99 ms": result["p99"], "first error": "" if not result["errors"] else "see the server log"}


def server_stats(port: int) -> dict[str, float]:
    """Sums and counts of the search stage and the batch sizes, from /metrics."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    wanted = {'prodsearch_search_stage_seconds_sum{stage="search"}': "search s",
              'prodsearch_search_stage_seconds_count{stage="search"}': "searches",
              "prodsearch_embed_batch_photos_sum": "photos", "prodsearch_embed_batch_photos_count": "steps"}
    return {wanted[k]: float(v) for k, _, v in (line.rpartition(" ") for line in text.splitlines()) if k in wanted}


def in_process(index_dir: Path, photos: list[Path], latency_photos: int) -> tuple[float, float, str]:
    """(embed_files photos/s, warm single-photo ProductIndex.query p50 ms, encoder) in this process."""
    index = ProductIndex.open(index_dir)
    index.query(photos[:2], num_workers=0)
    rate = max(embed_files(index.encoder, photos).images_per_second for _ in range(2))
    times = []
    for photo in photos[:latency_photos]:
        start = time.perf_counter()
        index.query([photo], num_workers=0)
        times.append(time.perf_counter() - start)
    encoder = describe(index.encoder)
    index.close()
    return rate, 1000 * statistics.median(times), encoder


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def soak(index_dir: Path, port: int, pid: int, bodies: list, photo: Path, minutes: float, work: Path) -> dict:
    """8 clients for ``minutes`` while a loop of CLI ``add`` and ``remove`` puts a SKU whose photo is
    among the queries (one request in 8) into the index and takes it out again. An answer is
    consistent when it shows that SKU exactly in the generations that hold it (as the writer's
    ``--json`` reports say), first for its own photo."""
    sku_dir = work / "soak-catalog" / "soak-sku"
    sku_dir.mkdir(parents=True, exist_ok=True)
    (sku_dir / photo.name).write_bytes(photo.read_bytes())
    present: dict[int, bool] = {}  # generation -> whether soak-sku is in it
    stop, writes = threading.Event(), []

    def writer():
        while not stop.is_set():
            for args in (["add", str(work / "soak-catalog"), "-q"], ["remove", "--sku", "soak-sku"]):
                out = subprocess.run([*prodsearch_command(), *args, "--index", str(index_dir), "--json",
                                      "--wait", "30"], capture_output=True, text=True)
                if out.returncode != 0:
                    writes.append(f"failed: {out.stderr.strip()}")
                    continue
                generation = json.loads(out.stdout)["generation"]
                if generation is not None:  # None: nothing changed (an add after a failed remove)
                    present[generation] = args[0] == "add"
                writes.append(args[0])

    subprocess.run([*prodsearch_command(), "remove", "--sku", "soak-sku", "--index", str(index_dir)],
                   capture_output=True)  # left by an earlier soak, or not there (then it fails: fine)
    mixed = [multipart([photo.read_bytes()]) if i % 8 == 0 else b for i, b in enumerate(bodies)]
    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    # RSS counts from a steady state: the server's threads and buffers at this concurrency, and the
    # first swaps of a new generation (two views live at once for a moment), which take it up a step.
    load(port, mixed, 8, 60.0, 10**9)
    rss_start, rss = rss_mb(pid), []

    def tick():
        rss.append(rss_mb(pid))
        if len(rss) % 60 == 0:
            log.warning("soak: %d s, RSS %.1f MB, %d generations written", len(rss), rss[-1], len(present))

    threads, wall = run_clients(port, mixed, 8, 60 * minutes, 10**9, tick)
    stop.set()
    thread.join()
    rss_end = rss_mb(pid)
    answers = [(i % 8 == 0, a) for t in threads for i, a in t.answers]
    before = min(present) - 1 if present else None  # the generation the soak started from: without soak-sku
    wrong = 0
    for own_photo, a in answers:  # its own photo must find it exactly where it is; no other photo where it is not
        holds = present.get(a["generation"], False) if a["generation"] != before else False
        listed = "soak-sku" in [m["sku"] for m in a["matches"]]
        wrong += (a["match"] == "soak-sku") != holds if own_photo else (listed and not holds)
    return {"minutes": minutes, **summary(threads, wall),
            "generations written": len(present), "failed writes": sum(w.startswith("failed") for w in writes),
            "answers with soak-sku in/out as their generation says": f"{len(answers) - wrong}/{len(answers)}",
            "RSS start MB": rss_start, "RSS max MB": max(rss, default=rss_end), "RSS end MB": rss_end,
            "RSS growth %": 100 * (rss_end / rss_start - 1),
            "first failed write": next((w for w in writes if w.startswith("failed")), "")}


def threads_check(seconds: float) -> list[dict]:
    """Single-query FAISS search latency on a 100k IVF index, alone and beside an ONNX embedding
    loop, with 1 OpenMP thread and with one per core."""
    import faiss

    from prodsearch.indexer.vectors import set_search_threads
    from prodsearch.retrieval.encoders import create_encoder

    rng = np.random.default_rng(0)
    x = rng.normal(size=(100_000, 1280)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = faiss.index_factory(1280, "IVF1024,Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(x[:40_000])
    index.add(x)
    index.nprobe = 16
    encoder = create_encoder("tf_efficientnet_lite0", runtime="onnx", precision="fp32")
    batch = np.zeros((8, 3, 224, 224), np.float32)
    rows = []
    for busy in (False, True):
        for threads in (1, os.cpu_count() or 2):
            set_search_threads(threads)
            stop = threading.Event()
            loop = threading.Thread(target=lambda: [encoder.encode(batch) for _ in iter(stop.is_set, True)], daemon=True)
            if busy:
                loop.start()
            times, deadline = [], time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                q = x[rng.integers(0, len(x), 1)]
                start = time.perf_counter()
                index.search(q, 10)
                times.append(time.perf_counter() - start)
            stop.set()
            if busy:
                loop.join()
            rows.append({"embedder running": "yes" if busy else "no", "FAISS threads": threads,
                         "searches": len(times), "p50 ms": 1000 * statistics.median(times),
                         "p95 ms": 1000 * float(np.percentile(times, 95))})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--work", type=Path, default=Path("/tmp/prodsearch-serve-bench"))
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--seconds", type=float, default=20.0, help="per load level")
    parser.add_argument("--requests", type=int, default=2000, help="per client and level, at most")
    parser.add_argument("--modes", default="--no-batching,--batching",
                        help="comma-separated server options to compare (micro-batching off and on); "
                             "'' skips the load table")
    parser.add_argument("--client", choices=["auto", "wrk", "python"], default="auto",
                        help="load generator: wrk (apt-get install wrk; auto where installed) or Python threads")
    parser.add_argument("--soak-minutes", type=float, default=0.0)
    parser.add_argument("--threads-check", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(cpu_line(), flush=True)
    manifests = write_grocery_store_manifests(args.dataset, args.work)
    index_dir = args.work / "index-B"
    if not (index_dir / "manifest.json").is_file():
        build_index(manifests.catalog_b, index_dir)
    test_photos = [it.path for it in read_listing(manifests.test).items]
    photos = test_photos[::max(1, len(test_photos) // 400)][:400]
    photo_bytes = [p.read_bytes() for p in photos]
    bodies = [multipart([b]) for b in photo_bytes]
    rate, query_p50, encoder = in_process(index_dir, photos, 100)
    print(f"in process ({encoder}): embed_files {rate:.1f} photos/s; warm ProductIndex.query p50 {query_p50:.1f} ms\n",
          flush=True)
    client = args.client if args.client != "auto" else ("wrk" if shutil.which("wrk") else "python")
    print(f"clients: {client}\n", flush=True)
    rows = []
    for batching in filter(None, args.modes.split(",")):
        with server(index_dir, args.work / f"serve{batching}.log", batching) as (proc, base):
            port = int(base.rsplit(":", 1)[1])
            load(port, bodies[:8], 2, 3.0, 20)  # warm-up
            for clients in args.clients:
                before = server_stats(port)
                if client == "wrk":
                    row = wrk_load(port, photo_bytes, clients, args.seconds, args.work)
                else:
                    row = load(port, bodies, clients, args.seconds, args.requests)
                after = server_stats(port)
                steps = after["steps"] - before["steps"]
                row = {"batching": batching.removeprefix("--"), **row,
                       "x embed_files": row["req/s"] / rate, "p50 x query": row["p50 ms"] / query_p50,
                       "photos per step": (after["photos"] - before["photos"]) / steps if steps else float("nan"),
                       "search mean ms": 1000 * (after["search s"] - before["search s"])
                       / max(1.0, after["searches"] - before["searches"])}
                rows.append(row)
                print(markdown_table([{k: v for k, v in row.items() if k != "first error"}]).splitlines()[-1], flush=True)
    print()
    print(markdown_table([{k: v for k, v in r.items() if k != "first error"} for r in rows]))
    for r in rows:
        if r["errors"]:
            print(f"{r['batching']} {r['clients']} clients: first error {r['first error']}")
    if args.soak_minutes:
        with server(index_dir, args.work / "serve-soak.log") as (proc, base):
            port = int(base.rsplit(":", 1)[1])
            load(port, bodies[:8], 2, 3.0, 20)
            result = soak(index_dir, port, proc.pid, bodies, photos[0], args.soak_minutes, args.work)
        print("\nsoak: 8 clients while a loop of CLI add and remove changes the index")
        print(markdown_table([{k: v for k, v in result.items() if not k.startswith("first")}]))
        for key in ("first error", "first failed write"):
            if result[key]:
                print(f"{key}: {result[key]}")
    if args.threads_check:
        print("\nFAISS single-query search, 100k x 1280 IVF1024,Flat, nprobe 16")
        print(markdown_table(threads_check(10.0)))


if __name__ == "__main__":
    main()
