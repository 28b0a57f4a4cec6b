"""Training under torchrun (issue 18), on the CPU with gloo: two processes sharing each global batch
train what one process trains with that batch, and either resumes the other's checkpoint.

Tolerances: the processes add the same numbers in another order (gradients averaged over two
processes, batch statistics summed), so float32 rounding differs. Measured on the tiny shop below
over 4 epochs: losses within 2e-6 relative, embeddings within 8e-5. Asserted: losses within 1e-4
relative, embeddings within 1e-3 (unit vectors of 32 floats), validation accuracy equal.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from prodsearch.cli import cli
from prodsearch.failpoints import CRASH_ENV
from prodsearch.retrieval.checkpoint import load_embedder
from prodsearch.retrieval.distributed import World
from prodsearch.retrieval.embedding import embed_files
from prodsearch.retrieval.sampling import EpochBatches
from prodsearch.retrieval.sync_bn import CrossProcessBatchNorm, sync_batchnorm
from prodsearch.retrieval.torch_encoder import TorchEncoder
from prodsearch.retrieval.training import Trainer, TrainConfig, TrainingError
from prodsearch.synthetic import write_synthetic_dataset

from conftest import own_lines

LOSS_RTOL, EMBEDDING_ATOL = 1e-4, 1e-3


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("shop"), n_skus=6, snapshots_per_sku=4, size=64)


def train_args(shop, out, *extra):
    return ["train", str(shop.queries_csv), "--val", str(shop.catalog_csv), "--out", str(out), "--embed-dim", "32",
            "--img-size", "64", "--resize", "72", "--batch-size", "8", "--m-per-class", "2", "--workers", "0",
            "--device", "cpu", "--recipe", "none", "--json", *extra]


def torchrun(args, processes=2, env=None):
    """``torchrun --standalone --nproc-per-node N -m prodsearch ARGS``, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                           str(processes), "-m", "prodsearch", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def one_process(args):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def history(out):
    return json.loads((out / "history.json").read_text())


def embeddings(model_path, shop):
    paths = sorted(str(p) for p in shop.catalog_dir.glob("*/*.jpg"))
    return embed_files(TorchEncoder(load_embedder(model_path), "cpu", "fp32"), paths, num_workers=0).vectors


def assert_same_run(one, two, shop):
    a, b = history(one), history(two)
    assert [(r["stage"], r["epoch"], r["images"]) for r in a] == [(r["stage"], r["epoch"], r["images"]) for r in b]
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=LOSS_RTOL)
    for ra, rb in zip(a, b):
        assert rb["parts"] == pytest.approx(ra["parts"], rel=LOSS_RTOL)
    assert [r["val_top1"] for r in a] == [r["val_top1"] for r in b]
    difference = np.abs(embeddings(one / "model.pt", shop) - embeddings(two / "model.pt", shop)).max()
    assert difference < EMBEDDING_ATOL


WHOLE = ("--epochs", "2", "--accumulate", "2", "--frozen-stages", "5", "--balanced-epochs", "1",
         "--accuracy-epochs", "1")


@pytest.fixture(scope="module")
def single_run(shop, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    one_process(train_args(shop, out, *WHOLE))
    return out


def test_two_processes_train_what_one_process_trains(shop, single_run, tmp_path):
    """The network's upper stages, every stage (main, balanced, accuracy), accumulated batches."""
    done = torchrun(train_args(shop, tmp_path / "run", *WHOLE))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)  # only rank 0 speaks: one JSON document
    assert report["model_path"] == str(tmp_path / "run" / "model.pt")
    assert_same_run(single_run, tmp_path / "run", shop)


def test_a_distributed_checkpoint_resumes_in_one_process(shop, single_run, tmp_path):
    out = tmp_path / "run"
    crashed = torchrun(train_args(shop, out, *WHOLE), env={CRASH_ENV: "train-epoch"})
    assert crashed.returncode != 0
    [said] = [line for line in own_lines(crashed.stderr) if not line.startswith("WARNING")]  # by rank 1, once
    assert re.fullmatch(r"Error: process rank 0 of 2 stopped( \(killed by SIGKILL\))?; the run was ended", said)
    assert json.loads((out / "config.json").read_text())["epochs"] == 2
    assert not (out / "model.pt").exists()
    one_process(["train", "unused", "--out", "unused", "--resume", str(out / "last.pt"), "--device", "cpu",
                 "--workers", "0", "--json"])
    assert_same_run(single_run, out, shop)


def test_frozen_backbone_with_views_in_two_processes(shop, tmp_path):
    """Heads only: each process caches its share of the features and customer-photo views."""
    args = ("--epochs", "2", "--freeze-backbone", "--views", "2", "--augment", "customer", "--accuracy-epochs", "1")
    one_process(train_args(shop, tmp_path / "one", *args))
    done = torchrun(train_args(shop, tmp_path / "two", *args))
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(tmp_path / "one", tmp_path / "two", shop)


def test_each_process_takes_its_share_of_the_global_batches():
    labels = np.repeat(np.arange(6), 4)
    one = EpochBatches(labels, 2, 8, 24, seed=5)
    two = [EpochBatches(labels, 2, 8, 24, seed=5, world=World(rank, 2)) for rank in range(2)]
    for epoch in range(3):
        for sampler in [one, *two]:
            sampler.set_epoch(epoch)
        draws = list(one)
        shares = [list(s) for s in two]
        assert len(draws) == 24 and [len(s) for s in shares] == [12, 12] == [len(s) for s in two]
        # batch b of one process = rank 0's half of it, then rank 1's
        assert draws == [d for b in range(3) for share in shares for d in share[4 * b:4 * b + 4]]
    first = EpochBatches(labels, 2, 8, 24, seed=5)
    first.set_epoch(1)
    assert list(first) != list(one)  # another epoch, other batches
    first.set_epoch(2)
    assert list(first) == draws  # the same epoch drawn again (a resumed run): the same batches


def test_a_batch_that_cannot_be_shared_is_refused(shop, tmp_path):
    config = TrainConfig(train=str(shop.queries_csv), out=str(tmp_path), batch_size=8, m_per_class=2, device="cpu")
    with pytest.raises(TrainingError, match="--batch-size 8 \\(the global batch\\) is shared by 3 processes"):
        Trainer(config, None, World(0, 3))


@pytest.fixture
def group_of_one(tmp_path):
    """A gloo process group of one process: collectives run, and sum over that one."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_cross_process_batchnorm_computes_batchnorm(group_of_one):
    """Its own arithmetic (statistics all-reduced, differentiably) against torch's BatchNorm1d:
    outputs, gradients and running statistics; the torchrun tests above run it in two processes."""
    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4))
    synced = sync_batchnorm(torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4)), torch.device("cpu"))
    synced.load_state_dict(plain.state_dict())
    assert isinstance(synced[1], CrossProcessBatchNorm)
    for step in range(3):
        x = torch.randn(16, 5) * (step + 1) + step
        a, b = plain(x), synced(x)
        assert torch.allclose(a, b, atol=1e-5)
        (a * torch.arange(4.0)).sum().backward()
        (b * torch.arange(4.0)).sum().backward()
    for p, q in zip(plain.parameters(), synced.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-4)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.allclose(getattr(plain[1], name).float(), getattr(synced[1], name).float(), atol=1e-5)
    plain.eval(), synced.eval()
    x = torch.randn(3, 5)
    assert torch.allclose(plain(x), synced(x), atol=1e-5)
