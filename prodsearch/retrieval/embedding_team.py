"""Embedding photos in every process of a torchrun run: rank 0 hands out chunks, each process
embeds its share of a chunk into a chunk file, rank 0 reads the files back in order.

``torchrun --nproc-per-node N -m prodsearch index|add|update ...`` runs the command in N processes
per node. Rank 0 runs it as one process would (scan, lock, commit), except that
:meth:`EmbeddingTeam.embed_files` embeds a chunk across the processes; the other ranks run
:func:`serve` until rank 0 is done. A process writes its share of a chunk as
``<folder>/chunk-<digest>/rank-<r>-of-<N>.npz`` (the folder is the index's staging folder, which
every node must see: a shared filesystem for several nodes); rank 0 merges them, the caller
commits the chunk, and the chunk's folder goes. A run that dies keeps the shares that were written:
started again, it re-embeds only the photos no chunk file and no commit holds.

Processes talk over gloo (CPU sockets), also on GPU machines: they only exchange small messages.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from prodsearch.errors import ProdsearchError
from prodsearch.failpoints import crash_point
from prodsearch.retrieval.distributed import EMBEDDING_TIMEOUT, World, local_device, process_group, world_from_env
from prodsearch.retrieval.embedding import EmbedFiles, FileEmbeddings, FilesDone, embed_files
from prodsearch.retrieval.run_end import collective, has_ended
from prodsearch.retrieval.runtime import Encoder

log = logging.getLogger(__name__)

R = TypeVar("R")


class EmbeddingTeamError(ProdsearchError):
    """A process of a distributed run could not embed its share."""


def run_as_team(work: Callable[["EmbeddingTeam | None"], R], world: World | None = None) -> R | None:
    """``work(team)`` on rank 0, with the other processes embedding for it; ``work(None)`` in a
    single process. Other ranks return None once rank 0 is done (or failed: it reports why)."""
    world = world or world_from_env()
    if not world.is_distributed:
        return work(None)
    with process_group(world, "gloo", EMBEDDING_TIMEOUT):
        if not world.is_main:
            serve(world)
            return None
        team = EmbeddingTeam(world)
        try:
            result = work(team)
            team.clear()
            return result
        finally:
            if not has_ended():  # else the others are gone or going, and cannot be told
                team.stop()


def embeds_as_team(function: Callable[..., R]) -> Callable[..., R | None]:
    """``function(..., team=...)`` through :func:`run_as_team`: an index command that embeds in
    every process of a torchrun run, and in one process as before."""

    @functools.wraps(function)
    def run(*args, **kwargs):
        return run_as_team(lambda team: function(*args, **kwargs, team=team))

    return run


def embedder_in(team: "EmbeddingTeam | None", folder: Path) -> EmbedFiles:
    """How to embed files: in this process, or by ``team`` with its chunk files in ``folder``."""
    return embed_files if team is None else functools.partial(team.embed_files, folder=folder)


def _broadcast(message: Any = None) -> Any:
    import torch.distributed as dist

    box = [message]
    with collective(world_from_env()):
        dist.broadcast_object_list(box, src=0)
    return box[0]


def _gather(status: str | None) -> list[str | None]:
    import torch.distributed as dist

    statuses: list[str | None] = [None] * dist.get_world_size()
    with collective(world_from_env()):
        dist.all_gather_object(statuses, status)
    return statuses


class EmbeddingTeam:
    """Rank 0's side: :meth:`embed_files` as :func:`~prodsearch.retrieval.embedding.embed_files`,
    each process embedding its share."""

    def __init__(self, world: World):
        self.world = world
        self._shared: Encoder | None = None  # the encoder the other processes hold
        self._local: Encoder | None = None  # rank 0's copy of it, sized to its share of the cores
        self.chunks = 0  # handed out so far
        self.folders: set[Path] = set()

    def embed_files(self, encoder: Encoder, paths: Sequence[str | os.PathLike], *, folder: Path,
                    batch_size: int | None = None, num_workers: int | None = None,
                    progress: FilesDone | None = None, views: int = 1) -> FileEmbeddings:
        start = time.perf_counter()
        if encoder is not self._shared:
            payload = encoder_payload(encoder)
            _broadcast(("encoder", payload))
            self._shared = encoder
            # The torch model already sits on rank 0's device; an ONNX session gets its share of the cores.
            self._local = encoder if encoder.runtime == "torch" else encoder.with_threads(cores_per_process(self.world))
        paths = [os.fspath(p) for p in paths]
        chunk = folder / f"chunk-{chunk_digest(paths, views, encoder)}"
        order = {"chunk": str(chunk), "paths": paths, "views": views, "batch_size": batch_size,
                 "num_workers": num_workers}
        _broadcast(("chunk", order))
        self.chunks += 1
        self.folders.add(folder)
        share = self.world.share(len(paths))
        mine = max(1, share.stop - share.start)
        # Rank 0's progress through its share stands for every process's.
        scaled = None if progress is None else (lambda done, _: progress(done * len(paths) // mine, len(paths)))
        status = embed_share(self._local, self.world, order, scaled)
        failed = [f"process {rank}: {s}" for rank, s in enumerate(_gather(status)) if s]
        if failed:
            raise EmbeddingTeamError("embedding failed in " + "; ".join(failed))
        crash_point(f"embedded-chunk-{self.chunks}")
        merged = read_chunk(chunk, self.world.size, len(paths))
        merged.seconds = time.perf_counter() - start
        shutil.rmtree(chunk, ignore_errors=True)
        remove_if_empty(folder)
        if progress is not None:
            progress(len(paths), len(paths))
        return merged

    def clear(self) -> None:
        """After a run that succeeded: chunk files earlier runs left are of no more use."""
        for folder in self.folders:
            shutil.rmtree(folder, ignore_errors=True)

    def stop(self) -> None:
        """Let the other processes go (every run of :func:`run_as_team` ends with it)."""
        _broadcast(("stop", None))


def serve(world: World) -> None:
    """The other ranks: embed the share of each chunk rank 0 hands out, until it says stop."""
    encoder, broken, chunks = None, None, 0
    while True:
        kind, body = _broadcast()
        if kind == "stop":
            return
        chunks += kind == "chunk"
        crash_point(f"rank-{world.rank}-chunk-{chunks}")
        if kind == "encoder":
            try:
                encoder, broken = encoder_replica(body, world), None
            except Exception as exc:  # reported with the next chunk: rank 0 then stops the run
                encoder, broken = None, f"cannot open the model: {type(exc).__name__}: {exc}"
        elif kind == "chunk":
            _gather(broken or embed_share(encoder, world, body, None))


def embed_share(encoder: Encoder, world: World, order: dict, progress: FilesDone | None) -> str | None:
    """Embed this process's share of a chunk into its chunk file (kept from an earlier run if it
    is there); None, or why it failed."""
    target = Path(order["chunk"]) / f"rank-{world.rank}-of-{world.size}.npz"
    if target.is_file():
        log.info("%s is there from an earlier run: not embedded again", target)
        return None
    share = world.share(len(order["paths"]))
    try:
        result = embed_files(encoder, order["paths"][share], batch_size=order["batch_size"],
                             num_workers=order["num_workers"], progress=progress, views=order["views"])
        write_share(target, result, share.start)
    except Exception as exc:  # reported to rank 0, which stops the run with it
        log.exception("embedding %d photos failed", share.stop - share.start)
        return f"{type(exc).__name__}: {exc}"
    return None


def write_share(target: Path, result: FileEmbeddings, offset: int) -> None:
    """One process's share of a chunk, positions counted in the chunk; written whole or not at all."""
    target.parent.mkdir(parents=True, exist_ok=True)
    failed = sorted(result.failures)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(f, vectors=result.vectors, positions=result.positions + offset, sizes=result.sizes,
                 failed=np.array(failed, dtype=np.int64) + offset,
                 reasons=np.array(json.dumps([result.failures[i] for i in failed])))
    os.replace(tmp, target)


def read_chunk(chunk: Path, processes: int, n: int) -> FileEmbeddings:
    """Every process's share of a chunk, merged in input order."""
    parts = []
    for rank in range(processes):
        with np.load(chunk / f"rank-{rank}-of-{processes}.npz") as data:
            parts.append({k: data[k] for k in data.files})
    failures = {int(i): reason for p in parts for i, reason in zip(p["failed"], json.loads(str(p["reasons"])))}
    positions = np.concatenate([p["positions"] for p in parts]).astype(np.int64)
    if len(positions) + len(failures) != n:
        raise EmbeddingTeamError(f"the chunk files in {chunk} hold {len(positions) + len(failures)} of {n} photos")
    return FileEmbeddings(np.concatenate([p["vectors"] for p in parts]).astype(np.float32), positions,
                          np.concatenate([p["sizes"] for p in parts]), failures)


def chunk_digest(paths: list[str], views: int, encoder: Encoder) -> str:
    """What makes two chunks the same work: the photos, the views, the model."""
    h = hashlib.sha256(json.dumps([views, encoder.config.identity()], sort_keys=True, default=str).encode())
    for path in paths:
        h.update(path.encode() + b"\0")
    return h.hexdigest()[:16]


def remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def cores_per_process(world: World) -> int:
    return max(1, (os.cpu_count() or 1) // world.local_size)


def encoder_payload(encoder: Encoder) -> dict:
    """What another process needs to run the same model: an ONNX model's bytes, or a torch model
    (on the CPU, to be moved to that process's device)."""
    if encoder.runtime == "onnx":
        return {"runtime": "onnx", "data": encoder.serialized(), "name": encoder.name}
    if encoder.runtime == "torch":
        return {"runtime": "torch", "model": copy.deepcopy(encoder.model).cpu(), "precision": encoder.precision,
                "cuda": encoder.device.startswith("cuda")}
    raise EmbeddingTeamError(f"a {encoder.runtime} encoder cannot be shared by the processes of a torchrun run")


def encoder_replica(payload: dict, world: World) -> Encoder:
    """The encoder of :func:`encoder_payload` in this process: on its own GPU, or its share of the
    CPU cores."""
    if payload["runtime"] == "onnx":
        from prodsearch.retrieval.onnx_encoder import OnnxEncoder

        return OnnxEncoder(payload["data"], threads=cores_per_process(world), name=payload["name"])
    from prodsearch.retrieval.torch_encoder import TorchEncoder

    device = local_device("cuda" if payload["cuda"] else "cpu", world)
    precision = "auto" if payload["precision"] == "fp16" else payload["precision"]  # auto: fp16 where no bf16
    return TorchEncoder(payload["model"], device, precision)
