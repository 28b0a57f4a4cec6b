"""Running under torchrun: which process this is, its device, and the process group.

``torchrun --nproc-per-node N -m prodsearch train|index|add|update ...`` starts N processes on each
node and tells each who it is through the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``); nothing here launches processes. Reading
the environment needs no torch, so the command line can tell a helper process (rank > 0) to keep
quiet before it loads anything heavy.

How a run ends when one of its processes stops: :mod:`prodsearch.retrieval.run_end`.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

from prodsearch.retrieval.run_end import PEERS, collective, end_on_sigterm

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# Embedding waits while rank 0 hashes the catalog or commits a chunk; a dead process ends the
# run anyway (torchrun stops the others), so the collective timeout only has to outlast real work.
EMBEDDING_TIMEOUT = datetime.timedelta(hours=12)


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one run (a single process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs, progress and the index; the others only compute."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.size > 1

    def share(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` items (shares differ by at most one item)."""
        return slice(self.rank * n // self.size, (self.rank + 1) * n // self.size)


def world_from_env() -> World:
    """The :class:`World` torchrun describes in the environment; a plain run is rank 0 of 1."""
    env = os.environ
    size = int(env.get("WORLD_SIZE", 1))
    return World(int(env.get("RANK", 0)), size, int(env.get("LOCAL_RANK", 0)), int(env.get("LOCAL_WORLD_SIZE", size)))


def local_device(device: str | None, world: World) -> "torch.device":
    """Where this process computes: under torchrun on GPUs, the GPU of its local rank."""
    import torch

    from prodsearch.retrieval.device import resolve_device

    resolved = resolve_device(device)
    if resolved.type == "cuda" and world.is_distributed and resolved.index is None:
        resolved = torch.device("cuda", world.local_rank)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)  # "cuda" then means this GPU, also inside libraries
    return resolved


@contextlib.contextmanager
def process_group(world: World, backend: str, timeout: datetime.timedelta | None = None) -> Iterator[None]:
    """Join the run's process group for the ``with`` block (nothing for a single process):
    ``nccl`` between GPUs, ``gloo`` between CPUs."""
    import torch.distributed as dist

    if not world.is_distributed or dist.is_initialized():
        yield
        return
    dist.init_process_group(backend, timeout=timeout)
    log.info("process %d of %d joined the %s process group", world.rank, world.size, backend)
    previous = signal.getsignal(signal.SIGTERM)
    watching = end_on_sigterm(world)
    try:
        with collective(world):
            PEERS.learn(world)
            yield
    finally:
        if watching:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        with contextlib.suppress(RuntimeError):  # after a peer stopped, nothing is left to tear down in step
            dist.destroy_process_group()


def backend_for(device: "torch.device") -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def all_sum(values: Sequence[float], world: World) -> list[float]:
    """The sums over every process of each value (the values themselves for a single process)."""
    if not world.is_distributed:
        return list(values)
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(list(values), dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def gather_shares(local: "torch.Tensor", n: int, world: World) -> "torch.Tensor":
    """The ``n`` rows whose :meth:`World.share` each process computed as ``local``, in order, on
    every process."""
    if not world.is_distributed:
        return local
    import torch
    import torch.distributed as dist

    shares = [World(r, world.size).share(n) for r in range(world.size)]
    longest = max(s.stop - s.start for s in shares)
    device = _collective_device()
    padded = local.new_zeros((longest, *local.shape[1:])).to(device)
    padded[: len(local)] = local.to(device)
    parts = [torch.empty_like(padded) for _ in shares]
    dist.all_gather(parts, padded)
    return torch.cat([p[: s.stop - s.start] for p, s in zip(parts, shares)]).to(local.device)


def _collective_device() -> "torch.device":
    """Where the process group's tensors must be: this process's GPU for NCCL, the CPU for gloo."""
    import torch
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
