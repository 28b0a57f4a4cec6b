"""Embedding under torchrun (issue 18), on the CPU with gloo: ``index``, ``add`` and ``update`` in two
processes give the index one process gives (same ids and rows, vectors within float rounding, same
answers), and a distributed build that dies resumes without embedding again what it wrote."""

import json
import re
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from prodsearch.cli import cli
from prodsearch.failpoints import CRASH_ENV
from prodsearch.indexer import ProductIndex
from prodsearch.indexer.catalog_db import CatalogDB
from prodsearch.indexer.store import EMBEDDING_DIR

from conftest import own_lines, write_folder_catalog

SKUS = [f"s{i}" for i in range(6)]  # 3 photos each: 18
MODEL = ("--model", "tf_efficientnet_lite0@64", "--precision", "fp32", "--workers", "0")
# Each process's model runs on its share of the cores (one thread here), one process's on all of
# them, which may round float sums differently in the last bits; the catalog stores float16, so such
# a difference shows as one float16 step (relative 2**-10) or nothing. Measured on this 2-core
# machine: ONNX fp32 and int8 identical; torch fp32 one float16 step on some components (1.2e-4).
FLOAT16_STEP = 2.0 ** -10


def torchrun(args, env=None):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "prodsearch", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def one_process(args):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def two_processes(args, env=None):
    done = torchrun(args, env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)  # rank 0 alone reports: one JSON document


def contents(index_dir):
    db = CatalogDB(index_dir / "catalog.db")
    try:
        rows = sorted((r["id"], r["sku"], r["path"], r["md5"], r["width"], r["height"]) for r in db.image_rows())
        return rows, db.vectors([r[0] for r in rows], 1280)
    finally:
        db.close()


def assert_same_index(one, two, queries):
    rows_one, vectors_one = contents(one)
    rows_two, vectors_two = contents(two)
    assert rows_one == rows_two
    np.testing.assert_allclose(vectors_two, vectors_one, rtol=FLOAT16_STEP, atol=1e-6)
    answers = [[[m.sku for m in r.matches] for r in ProductIndex.open(d).query(queries)] for d in (one, two)]
    assert answers[0] == answers[1]
    assert not (two / EMBEDDING_DIR).exists()  # no chunk files left
    assert not any(p.name.startswith(f".{two.name}") for p in two.parent.iterdir())  # nor a partial build


@pytest.fixture
def catalog(tmp_path):
    return write_folder_catalog(tmp_path / "catalog", SKUS, per_sku=3)


def queries(catalog):
    return sorted(catalog.glob("*/*_1.jpg"))


@pytest.mark.parametrize("runtime", ["onnx", "torch"])
def test_index_in_two_processes_is_the_index_of_one(catalog, tmp_path, runtime):
    """Chunks of 5 photos, each shared by the two processes (an ONNX model's bytes, or a torch
    model, sent to the other process)."""
    args = [str(catalog), *MODEL, "--runtime", runtime, "--chunk-size", "5", "--json"]
    one = one_process(["index", *args, "--index", str(tmp_path / "one")])
    two = two_processes(["index", *args, "--index", str(tmp_path / "two")])
    assert one["images"] == two["images"] == 18
    assert_same_index(tmp_path / "one", tmp_path / "two", queries(catalog))


def test_add_and_update_in_two_processes(catalog, tmp_path):
    first = tmp_path / "first"
    for sku in SKUS[:3]:
        shutil.copytree(catalog / sku, first / sku)
    for name in ("one", "two"):
        one_process(["index", str(first), *MODEL, "--index", str(tmp_path / name), "--json"])
    args = [str(catalog), *MODEL, "--chunk-size", "4", "--json"]
    added = [one_process(["add", *args, "--index", str(tmp_path / "one")]),
             two_processes(["add", *args, "--index", str(tmp_path / "two")])]
    assert added[0]["added"] == added[1]["added"] == 9
    assert_same_index(tmp_path / "one", tmp_path / "two", queries(catalog))
    shutil.rmtree(catalog / SKUS[0])  # gone from the shop
    write_folder_catalog(catalog, ["s9"], per_sku=2, seed0=77)  # new
    updated = [one_process(["update", *args, "--index", str(tmp_path / "one")]),
               two_processes(["update", *args, "--index", str(tmp_path / "two")])]
    assert (updated[0]["added"], updated[0]["removed"]) == (updated[1]["added"], updated[1]["removed"]) == (2, 3)
    assert_same_index(tmp_path / "one", tmp_path / "two", queries(catalog))


def test_a_distributed_build_that_dies_resumes(catalog, tmp_path):
    """Killed after each process wrote its share of the second chunk (the first committed): the
    restart commits that chunk from the files, and embeds only the rest."""
    args = ["index", str(catalog), *MODEL, "--chunk-size", "8", "--json", "--index", str(tmp_path / "two")]
    crashed = torchrun(args, env={CRASH_ENV: "embedded-chunk-2"})
    assert crashed.returncode != 0
    [partial] = tmp_path.glob(".two.partial-*")
    shares = sorted(p.name for p in (partial / EMBEDDING_DIR).glob("chunk-*/rank-*"))
    assert shares == ["rank-0-of-2.npz", "rank-1-of-2.npz"]
    done = torchrun(["-v", *args])
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["resumed"] == 8 and report["images"] == 18
    assert done.stderr.count("is there from an earlier run") == 2  # both shares of chunk 2
    one_process(["index", str(catalog), *MODEL, "--json", "--index", str(tmp_path / "one")])
    assert_same_index(tmp_path / "one", tmp_path / "two", queries(catalog))


def test_a_killed_distributed_add_leaves_chunk_files_the_next_write_removes(catalog, tmp_path):
    """Killed once both processes wrote their shares of its first chunk: the chunk files stay for a
    torchrun run started again, info counts them, and a write that succeeds without them (a rebuild
    in one process) removes them."""
    index_dir = tmp_path / "idx"
    small = write_folder_catalog(tmp_path / "small", SKUS[:2], per_sku=2, seed0=900)
    one_process(["index", str(small), *MODEL, "--json", "--index", str(index_dir)])
    crashed = torchrun(["add", str(catalog), *MODEL, "--chunk-size", "4", "--index", str(index_dir)],
                       env={CRASH_ENV: "embedded-chunk-1"})
    assert crashed.returncode != 0
    assert sorted(p.name for p in (index_dir / EMBEDDING_DIR).glob("chunk-*/rank-*")) == ["rank-0-of-2.npz",
                                                                                       "rank-1-of-2.npz"]
    assert one_process(["info", "--index", str(index_dir), "--json"])["leftovers"] == {"uploads": 0, "chunk_files": 2}
    one_process(["index", str(catalog), *MODEL, "--json", "--index", str(index_dir)])
    assert not (index_dir / EMBEDDING_DIR).exists()
    assert one_process(["info", "--index", str(index_dir), "--json"])["leftovers"] == {"uploads": 0, "chunk_files": 0}


def test_an_error_is_reported_once_and_every_process_ends(catalog, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("not an index")
    failed = torchrun(["index", str(catalog), *MODEL, "--index", str(tmp_path / "taken")])
    assert failed.returncode != 0 and failed.stdout == ""
    errors = [line for line in failed.stderr.splitlines() if line.startswith("Error: ")]  # besides torchrun's report
    assert len(errors) == 1 and "is not a prodsearch index" in errors[0]


@pytest.mark.parametrize("dies", [1, 0])
def test_a_process_that_dies_ends_the_run_in_one_line(catalog, tmp_path, dies):
    """Killed while the run embeds (rank 1 when handed its first chunk, or rank 0 once the first
    chunk is embedded): the process still running says which one stopped, once, without gloo's
    traceback (test_a_distributed_build_that_dies_resumes resumes such a run)."""
    point = "rank-1-chunk-1" if dies else "embedded-chunk-1"
    args = ["index", str(catalog), *MODEL, "--chunk-size", "8", "--index", str(tmp_path / "two")]
    crashed = torchrun(args, env={CRASH_ENV: point})
    assert crashed.returncode != 0 and crashed.stdout == ""
    [said] = own_lines(crashed.stderr)  # how it stopped is gone once torchrun collected it first
    assert re.fullmatch(rf"Error: process rank {dies} of 2 stopped( \(killed by SIGKILL\))?; the run was ended", said)


def test_a_usage_error_is_printed_once(tmp_path):
    failed = torchrun(["index", "--no-such-option"])
    assert failed.returncode != 0 and failed.stdout == ""
    assert own_lines(failed.stderr) == ["Usage: prodsearch index [OPTIONS] CATALOG",
                                        "Try 'prodsearch index --help' for help.", "",
                                        "Error: No such option '--no-such-option'."]
