"""How a torchrun run ends when one of its processes stops (killed, crashed, or failed with an
error of its own): the others' collectives fail with the backend's error ("Connection closed by
peer") and torchrun sends them SIGTERM. Both become :class:`RunEndedError`, whose message names
the rank that stopped (found by the process ids the ranks exchange when they join the group, see
:func:`prodsearch.retrieval.distributed.process_group`), and which only the lowest-ranked process
still running prints: one line, not a traceback per process.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol

from prodsearch.errors import ProdsearchError


class World(Protocol):
    """What is read of :class:`prodsearch.retrieval.distributed.World` here (which imports this module)."""

    rank: int
    size: int

# How long a process whose collective failed looks for the process that stopped (its exit takes a moment).
STOPPED_WAIT_SECONDS = 1.0
PEER_FAILURE = re.compile(r"by peer|Broken pipe|Connection refused|Socket closed", re.IGNORECASE)


class RunEndedError(ProdsearchError):
    """Another process of the run stopped, so this one cannot go on; ``reports``: whether this
    process is the one that says so (the lowest-ranked one still running)."""

    def __init__(self, message: str, reports: bool):
        super().__init__(message)
        self.reports = reports


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
    return PEERS.ended is not None


def run_ended(world: World, exc: BaseException | None) -> RunEndedError | None:
    """The error that ends this process because another one stopped (``exc``: the failed collective's
    error; None: SIGTERM came); None when ``exc`` is not that (a bug of this process keeps its traceback)."""
    if PEERS.ended is not None:
        return PEERS.ended
    import torch.distributed as dist

    said = str(exc or "")
    looks_lost = exc is None or isinstance(exc, dist.DistError) or bool(PEER_FAILURE.search(said))
    stopped = PEERS.stopped(world, STOPPED_WAIT_SECONDS if looks_lost else 0.0)
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
    PEERS.ended = RunEndedError(message, reports=world.rank == min(running, default=world.rank))
    return PEERS.ended


def end_on_sigterm(world: World) -> bool:
    """torchrun stops the other processes with SIGTERM when one fails: end with :class:`RunEndedError`
    (its one line) instead of dying silently or mid-traceback. Forked workers (DataLoader) keep the
    default. False off the main thread, where no handler can be set."""
    owner = os.getpid()

    def stopped(signum, frame):
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if PEERS.ended is None:  # else this process is already saying why the run ended
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


PEERS = _Peers()


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
