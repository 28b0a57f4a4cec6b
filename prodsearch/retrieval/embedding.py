"""Embedding many image files fast: decoding in DataLoader workers overlaps the model.

Bad files never stop a batch: each one is reported with its reason and the rest carry on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from prodsearch.retrieval.device import default_batch_size, inference_dtype, resolve_device
from prodsearch.retrieval.embedder import Embedder
from prodsearch.retrieval.images import ImageLoadError, load_image, to_rgb
from prodsearch.retrieval.preprocess import build_transform, decode_min_side

log = logging.getLogger(__name__)

FilesDone = Callable[[int, int], None]  # called with (files done, files in total)

# Below this many files, starting worker processes costs more than it saves.
MIN_FILES_FOR_WORKERS = 32


@dataclass
class FileEmbeddings:
    """Embeddings of the files that could be read, in input order, and why the others could not."""

    vectors: np.ndarray  # (n_ok, dim) float32, L2-normalised
    positions: np.ndarray  # (n_ok,) index into the input paths
    sizes: np.ndarray  # (n_ok, 2) width, height of the upright image
    failures: dict[int, str] = field(default_factory=dict)  # input index -> reason
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return len(self.positions) / self.seconds if self.seconds > 0 else 0.0


class _ImageFiles(Dataset):
    def __init__(self, paths: Sequence[str | os.PathLike], data_config: dict):
        self.paths = list(paths)
        self.transform = build_transform(data_config)
        self.min_side = decode_min_side(data_config)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            img = load_image(self.paths[i], min_side=self.min_side)
        except ImageLoadError as exc:
            return None, i, None, str(exc)
        return self.transform(img), i, img.size, None


def _collate(items):
    good = [it for it in items if it[0] is not None]
    failures = {it[1]: it[3] for it in items if it[0] is None}
    if not good:
        return None, [], [], failures
    return torch.stack([it[0] for it in good]), [it[1] for it in good], [it[2] for it in good], failures


def decode_worker_init(_worker_id: int) -> None:
    # Workers only decode; one thread each leaves the cores to the model.
    torch.set_num_threads(1)


def default_num_workers(n_files: int) -> int:
    """Decoding workers: only on cores the model does not use. On 2 cores the model takes both and
    workers add only inter-process copies (Grocery Store photos, lite0 bf16: 129 img/s in-process,
    103-109 with 1-2 workers, ``benchmarks/embed_throughput.py``)."""
    cores = os.cpu_count() or 1
    if n_files < MIN_FILES_FOR_WORKERS or cores <= 2:
        return 0
    return min(4, cores - 2)


def prepare(embedder: Embedder, device: torch.device) -> Embedder:
    """Move the embedder to ``device`` in eval mode, channels_last (1.2-2x faster on CPU)."""
    return embedder.to(device, memory_format=torch.channels_last).eval()


def embed_files(
    embedder: Embedder,
    paths: Sequence[str | os.PathLike],
    *,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    num_workers: int | None = None,
    progress: FilesDone | None = None,
    pooled: bool = False,
    precision: str = "auto",
) -> FileEmbeddings:
    """Embed image files in order; ``progress(done, total)`` is called after each batch.

    ``precision``: ``auto`` runs the model in bfloat16 where the hardware has it (see
    :func:`~prodsearch.retrieval.device.inference_dtype`), ``fp32`` / ``bf16`` force one.

    ``pooled`` returns the backbone's pooled features instead (before the head, not normalised),
    which is what training with a frozen backbone caches.
    """
    device = resolve_device(device)
    batch_size = batch_size or default_batch_size(device, embedder.data_config["input_size"][-1])
    num_workers = default_num_workers(len(paths)) if num_workers is None else num_workers
    model = prepare(embedder, device)
    dtype = inference_dtype(device, precision)
    loader = DataLoader(
        _ImageFiles(paths, embedder.data_config), batch_size=batch_size, num_workers=num_workers,
        collate_fn=_collate, worker_init_fn=decode_worker_init, pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    vectors, positions, sizes, failures, done = [], [], [], {}, 0
    start = time.perf_counter()
    with torch.inference_mode():
        for batch, idx, batch_sizes, batch_failures in loader:
            failures.update(batch_failures)
            if batch is not None:
                vectors.append(_run(model, batch, device, pooled, dtype))
                positions.extend(idx)
                sizes.extend(batch_sizes)
            done += len(idx) + len(batch_failures)
            if progress:
                progress(done, len(paths))
    seconds = time.perf_counter() - start
    result = FileEmbeddings(
        vectors=np.concatenate(vectors) if vectors else np.zeros((0, embedder.embed_dim), np.float32),
        positions=np.asarray(positions, dtype=np.int64),
        sizes=np.asarray(sizes, dtype=np.int64).reshape(-1, 2),
        failures=failures,
        seconds=seconds,
    )
    log.info("embedded %d files in %.1fs (%.1f images/s), %d failed",
             len(result.positions), seconds, result.images_per_second, len(failures))
    return result


def embed_pil(embedder: Embedder, images: Sequence[Image.Image], *, device: str | torch.device = "auto",
              precision: str = "auto") -> np.ndarray:
    """Embed in-memory RGB images with the same preprocessing (and precision) as files."""
    device = resolve_device(device)
    transform = build_transform(embedder.data_config)
    model = prepare(embedder, device)
    with torch.inference_mode():
        return _run(model, torch.stack([transform(to_rgb(img)) for img in images]), device,
                    dtype=inference_dtype(device, precision))


def _run(model: Embedder, batch: torch.Tensor, device: torch.device, pooled: bool = False,
         dtype: torch.dtype | None = None) -> np.ndarray:
    batch = batch.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
        out = model.pool(model.forward_features(batch)) if pooled else model(batch)
    out = out.float()
    if not pooled:  # re-normalise: the head normalised in reduced precision
        out = torch.nn.functional.normalize(out, dim=1)
    return out.cpu().numpy()
