"""Running under torchrun: which process this is, its device, and the process group.

``torchrun --nproc-per-node N -m prodsearch train|index|add|update ...`` starts N processes on each
node and tells each who it is through the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``); nothing here launches processes. Reading
the environment needs no torch, so the command line can tell a helper process (rank > 0) to keep
quiet before it loads anything heavy.

When a process of the run stops (killed, crashed, or failed with an error of its own), the others'
collectives fail with the backend's error ("Connection closed by peer") and torchrun sends them
SIGTERM. Both become :class:`RunEndedError`, whose message names the rank that stopped (found by
the process ids the ranks exchange when they join), and which only the lowest-ranked process
still running prints: one line, not a traceback per process.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import re
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

from prodsearch.errors import ProdsearchError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# Embedding waits while rank 0 hashes the catalog or commits a chunk; a dead process ends the
# run anyway (torchrun stops the others), so the collective timeout only has to outlast real work.
EMBEDDING_TIMEOUT = datetime.timedelta(hours=12)
# How long a process whose collective failed looks for the process that stopped (its exit takes a moment).
STOPPED_WAIT_SECONDS = 1.0
PEER_FAILURE = re.compile(r"by peer|Broken pipe|Connection refused|Socket closed", re.IGNORECASE)


class RunEndedError(ProdsearchError):
    """Another process of the run stopped, so this one cannot go on; ``reports``: whether this
    process is the one that says so (the lowest-ranked one still running)."""

    def __init__(self, message: str, reports: bool):
        super().__init__(message)
        self.reports = reports


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
    watching = _end_on_sigterm(world)
    try:
        with collective(world):
            _PEERS.learn(world)
            yield
    finally:
        if watching:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        with contextlib.suppress(RuntimeError):  # after a peer stopped, nothing is left to tear down in step
            dist.destroy_process_group()


@contextlib.contextmanager
def collective(world: World) -> Iterator[None]:
    """Inside: a collective that fails because another process stopped raises :class:`RunEndedError`."""
    try:
        yield
    except RunEndedError:
        raise
    except RuntimeError as exc:  # gloo's and NCCL's errors (DistError is a RuntimeError)
        ended = run_ended(world, exc)
        if ended is None:
            raise
        raise ended from None


def has_ended() -> bool:
    """Whether this process already learnt that the run ended (nothing more can be said to the others)."""
    return _PEERS.ended is not None


def run_ended(world: World, exc: BaseException | None) -> RunEndedError | None:
    """The error that ends this process because another one stopped (``exc``: the failed collective's
    error; None: SIGTERM came); None when ``exc`` is not that (a bug of this process keeps its traceback)."""
    if _PEERS.ended is not None:
        return _PEERS.ended
    import torch.distributed as dist

    said = str(exc or "")
    looks_lost = exc is None or isinstance(exc, dist.DistError) or bool(PEER_FAILURE.search(said))
    stopped = _PEERS.stopped(world, STOPPED_WAIT_SECONDS if looks_lost else 0.0)
    if not stopped and not looks_lost:
        return None
    if stopped:
        ranks = sorted(stopped)
        who = f"process rank {ranks[0]}" if len(ranks) == 1 else f"processes rank {', '.join(map(str, ranks))}"
        how = "; ".join(how for how in dict.fromkeys(stopped.values()) if how)
        message = f"{who} of {world.size} stopped{f' ({how})' if how else ''}; the run was ended"
    elif exc is None:
        message = ("this process was stopped by SIGTERM (torchrun sends it when another process fails, or when it "
                   "is interrupted); the run was ended")
    else:
        why = re.sub(r"^\[[^\]]*\]\s*", "", said).split(". ")[0] or type(exc).__name__
        message = f"another process of the {world.size} stopped ({why}); the run was ended"
    running = [r for r in range(world.size) if r not in stopped]
    _PEERS.ended = RunEndedError(message, reports=world.rank == min(running, default=world.rank))
    return _PEERS.ended


def _end_on_sigterm(world: World) -> bool:
    """torchrun stops the other processes with SIGTERM when one fails: end with :class:`RunEndedError`
    (its one line) instead of dying silently or mid-traceback. Forked workers (DataLoader) keep the
    default. False off the main thread, where no handler can be set."""
    owner = os.getpid()

    def stopped(signum, frame):
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if _PEERS.ended is None:  # else this process is already saying why the run ended
            raise run_ended(world, None)

    try:
        signal.signal(signal.SIGTERM, stopped)
    except ValueError:
        return False
    return True


@dataclass
class _Peers:
    """The (host, process id) of every rank, exchanged when the group is joined, so that a process
    can tell which of the others on its machine stopped, and how; and whether the run ended."""

    where: list[tuple[str, int]] = field(default_factory=list)
    ended: RunEndedError | None = None

    def learn(self, world: World) -> None:
        import torch.distributed as dist

        where: list = [None] * world.size
        dist.all_gather_object(where, (socket.gethostname(), os.getpid()))
        self.where, self.ended = where, None

    def stopped(self, world: World, wait: float) -> dict[int, str]:
        """Rank -> how it stopped, of this machine's other processes that did; waiting up to ``wait``
        seconds for one (a killed process takes a moment to exit)."""
        host, deadline = socket.gethostname(), time.monotonic() + wait
        while True:
            found = {rank: how for rank, (h, pid) in enumerate(self.where)
                     if rank != world.rank and h == host and (how := _exit_status(pid)) is not None}
            if found or time.monotonic() >= deadline:
                return found
            time.sleep(0.02)


_PEERS = _Peers()


def _exit_status(pid: int) -> str | None:
    """How process ``pid`` ended ("killed by SIGKILL", "exit code 1"; "" once torchrun collected
    it: how is gone with it); None while it runs (or where /proc cannot tell)."""
    if not Path("/proc/self/stat").is_file():
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[-1].split()  # fields 3 onwards; 52 is the exit status, as waitpid gives it
    if not fields or fields[0] not in ("Z", "X"):
        return None
    if len(fields) < 50:
        return ""
    status = int(fields[49])
    if not os.WIFSIGNALED(status):
        return f"exit code {os.WEXITSTATUS(status)}"
    try:
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    except ValueError:
        return f"killed by signal {os.WTERMSIG(status)}"


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
