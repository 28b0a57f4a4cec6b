"""CLI start-up: wall time of ``prodsearch --help`` and ``prodsearch query --help`` (issue 12).

Each command runs as a subprocess (one untimed warm-up, then ``--runs`` timed runs) on the current
tree and on a temporary ``git worktree`` of ``--before`` (default ``HEAD``: the tree before an
uncommitted change; once the change is committed, pass the commit before it). The worktree lives
in /tmp/cli-before and is removed afterwards.

    python benchmarks/cli_startup.py
    python benchmarks/cli_startup.py --before HEAD~1 --runs 9
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from prodsearch.eval.report import markdown_table

ROOT = Path(__file__).resolve().parents[1]
BEFORE_DIR = Path("/tmp/cli-before")
COMMANDS = (["--help"], ["query", "--help"])
FLAGS = ("avx2", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_line() -> str:
    """The CPU model and the flags that decide the fast paths (bf16 inference), for the table's context."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    shown = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in FLAGS)
    return f"CPU: {model}, {os.cpu_count()} cores; {shown}; Python {platform.python_version()}"


def prodsearch_command() -> list[str]:
    """The installed console script, as a user runs it; ``python -m prodsearch`` where there is none."""
    script = Path(sys.executable).with_name("prodsearch")
    return [str(script)] if script.exists() else [sys.executable, "-m", "prodsearch"]


def wall_times(tree: Path, args: list[str], runs: int) -> list[float]:
    """Seconds per run of ``prodsearch ARGS`` with ``tree`` first on the import path; one warm-up first."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    times = []
    for _ in range(runs + 1):
        start = time.perf_counter()
        subprocess.run(prodsearch_command() + args, env=env, cwd="/tmp", check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return times[1:]


@contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """A checkout of ``rev`` in /tmp/cli-before, removed on the way out."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--quiet", "--detach", str(BEFORE_DIR), rev],
                   check=True)
    try:
        yield BEFORE_DIR
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(BEFORE_DIR)], check=True)


def measure(label: str, tree: Path, runs: int) -> list[dict[str, str]]:
    rows = []
    for args in COMMANDS:
        t = wall_times(tree, args, runs)
        rows.append({"tree": label, "command": "prodsearch " + " ".join(args), "median s": f"{statistics.median(t):.3f}",
                     "min s": f"{min(t):.3f}", "max s": f"{max(t):.3f}"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="HEAD", help="Commit to compare with [default: HEAD].")
    parser.add_argument("--runs", type=int, default=5, help="Timed runs per command [default: 5].")
    args = parser.parse_args()
    rows = measure("current tree", ROOT, args.runs)
    with worktree(args.before) as before:
        rev = subprocess.run(["git", "-C", str(before), "rev-parse", "--short", "HEAD"], check=True,
                             capture_output=True, text=True).stdout.strip()
        rows += measure(f"before ({args.before} = {rev})", before, args.runs)
    print(cpu_line())
    print(f"{args.runs} timed runs each after one warm-up, subprocess wall time")
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
