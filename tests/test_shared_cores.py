"""Torch's OpenMP threads sleep while they wait (``OMP_WAIT_POLICY=PASSIVE``), so that a busy
neighbour on a shared core costs its share, not 9-20x (BENCHMARKS.md, "Torch on shared cores").

OpenMP reads the setting once, when torch loads: each case runs in a fresh interpreter and asks
libgomp itself (``OMP_DISPLAY_ENV``) how long an idle thread spins before it sleeps: 300,000 turns
when nothing is set, 0 when passive."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROBE = "from prodsearch.cli import cli; import prodsearch.retrieval.torch_encoder"  # the CLI, then torch


def openmp_spin_count(**env: str) -> int:
    """The spin count torch's OpenMP runtime reports after ``PROBE`` with ``env`` added."""
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", PROBE], check=False, capture_output=True, text=True, timeout=120,
                          env={**clean, "OMP_DISPLAY_ENV": "VERBOSE", **env})
    assert done.returncode == 0, done.stderr
    [line] = [line for line in done.stderr.splitlines() if line.strip().startswith("GOMP_SPINCOUNT =")]
    return int(line.split("=", 1)[1].strip().strip("'"))


def test_torch_threads_sleep_while_they_wait():
    assert openmp_spin_count() == 0


@pytest.mark.parametrize(("env", "spins"), [({"OMP_WAIT_POLICY": "active"}, 30_000_000_000),
                                            ({"GOMP_SPINCOUNT": "300000"}, 300_000)])
def test_the_users_own_setting_wins(env, spins):
    assert openmp_spin_count(**env) == spins
