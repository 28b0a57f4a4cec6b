"""Embedding many image files fast: decoding overlaps the model.

A small pool of threads decodes, resizes and normalises photos (PIL and numpy release the GIL)
while the encoder runs the previous batch, so the pipeline runs at the model's own rate. Bad files
never stop a batch: each one is reported with its reason and the rest carry on. Nothing here
imports torch: the encoder decides the runtime.

With ``views`` > 1 each photo becomes that many model inputs (itself, its centre and corner crops:
:mod:`prodsearch.retrieval.views`) and its vector is their fused mean: still one row per photo.
"""

from __future__ import annotations

import collections
import io
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from prodsearch.retrieval.images import ImageLoadError, decoded_pixels, load_image, to_rgb
from prodsearch.retrieval.preprocess import Preprocess, decode_min_side
from prodsearch.retrieval.runtime import Encoder, describe
from prodsearch.retrieval.views import check_views, decode_side, fuse_views, view_inputs

log = logging.getLogger(__name__)

FilesDone = Callable[[int, int], None]  # called with (files done, files in total)
EmbedFiles = Callable[..., "FileEmbeddings"]  # called as embed_files is: this process's, or a torchrun team's

# Photos decoded ahead of the model, in batches: enough to keep it busy, few enough to bound memory.
BATCHES_AHEAD = 2


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

    def split(self, n: int) -> tuple["FileEmbeddings", "FileEmbeddings"]:
        """The embeddings of the first ``n`` input files and of the rest (positions renumbered from 0
        in each): two lists embedded in one pass. The time is given to the first part."""
        head = self.positions < n
        return (FileEmbeddings(self.vectors[head], self.positions[head], self.sizes[head],
                               {i: r for i, r in self.failures.items() if i < n}, self.seconds),
                FileEmbeddings(self.vectors[~head], self.positions[~head] - n, self.sizes[~head],
                               {i - n: r for i, r in self.failures.items() if i >= n}, 0.0))


def default_num_workers(n_files: int) -> int:
    """Decoding threads. On 2 cores one is best (Grocery Store photos, lite0, ONNX fp32: 175 img/s
    with 1, 161 with 2, 134 with none; ``benchmarks/embed_throughput.py``): the model needs both
    cores too. More cores get more threads, for a GPU's rate."""
    cores = os.cpu_count() or 1
    return max(1, min(n_files, 1 if cores <= 2 else 2 if cores <= 4 else min(8, cores // 2)))


class Decoder:
    """Reads one file (or an upload's bytes in a ``BytesIO``) into the model inputs of its ``views``,
    ``(views, 3, H, W)``; failures become reasons, never exceptions. ``upsample_crops``: see
    :func:`~prodsearch.retrieval.views.view_inputs`."""

    def __init__(self, data_config: dict, views: int = 1, upsample_crops: bool = True):
        check_views(views)
        self.preprocess, self.views, self.upsample_crops = Preprocess(data_config), views, upsample_crops
        self.min_side = decode_side(decode_min_side(data_config), views)

    def __call__(self, path: str | os.PathLike | io.BytesIO) -> tuple[np.ndarray | None, tuple[int, int] | None, str | None]:
        """(inputs, upright size, None), or (None, None, why the file cannot be used)."""
        try:
            img = load_image(path, min_side=self.min_side)  # upright: crops are taken of what people see
        except ImageLoadError as exc:
            return None, None, str(exc)
        return view_inputs(img, self.views, self.preprocess, self.upsample_crops), img.size, None

    def pixels(self, path: str | os.PathLike | io.BytesIO) -> int:
        """How many pixels decoding ``path`` takes (:func:`decoded_pixels`), before decoding it."""
        return decoded_pixels(path, min_side=self.min_side)


def embed_files(
    encoder: Encoder,
    paths: Sequence[str | os.PathLike],
    *,
    batch_size: int | None = None,
    num_workers: int | None = None,
    progress: FilesDone | None = None,
    views: int = 1,
    upsample_crops: bool = True,
) -> FileEmbeddings:
    """Embed image files in order; ``progress(done, total)`` is called after each batch.

    ``num_workers`` decoding threads (0: decode in this thread, between batches). ``views`` > 1
    embeds each file as the fused mean of that many fixed views (an index's setting: see
    :mod:`prodsearch.retrieval.views`); ``upsample_crops=False`` gives a photo whose crops would be
    enlarged to the model's input its whole self as every view instead (the default keeps crops). ``batch_size`` counts model inputs, as the encoder's own
    does (the step measured fastest, and what bounds memory): a batch holds ``batch_size // views``
    photos, at least one, whose views are encoded in steps of at most ``batch_size``.
    """
    check_views(views)
    batch_size = batch_size or encoder.batch_size
    photos = max(1, batch_size // views)
    num_workers = default_num_workers(len(paths)) if num_workers is None else num_workers
    decode = Decoder(encoder.config.data_config, views, upsample_crops)
    vectors, positions, sizes, failures, done = [], [], [], {}, 0
    start = time.perf_counter()
    for batch in _batches(_decoded(decode, paths, num_workers, photos * BATCHES_AHEAD), photos):
        good = [(i, x, size) for i, x, size, _ in batch if x is not None]
        failures.update({i: reason for i, x, _, reason in batch if x is None})
        if good:
            inputs = np.concatenate([x for _, x, _ in good])
            vectors.append(fuse_views(_encoded(encoder, inputs, batch_size), views))
            positions.extend(i for i, _, _ in good)
            sizes.extend(size for _, _, size in good)
        done += len(batch)
        if progress:
            progress(done, len(paths))
    seconds = time.perf_counter() - start
    result = FileEmbeddings(
        vectors=np.concatenate(vectors) if vectors else np.zeros((0, encoder.dim), np.float32),
        positions=np.asarray(positions, dtype=np.int64),
        sizes=np.asarray(sizes, dtype=np.int64).reshape(-1, 2),
        failures=failures,
        seconds=seconds,
    )
    log.info("embedded %d files in %.1fs (%.1f images/s, %s%s), %d failed", len(result.positions), seconds,
             result.images_per_second, describe(encoder), f", {views} views each" if views > 1 else "", len(failures))
    return result


def _encoded(encoder: Encoder, inputs: np.ndarray, step: int) -> np.ndarray:
    """``encoder.encode`` in steps of at most ``step`` inputs (one photo's views may be more)."""
    if len(inputs) <= step:
        return encoder.encode(inputs)
    return np.concatenate([encoder.encode(inputs[i:i + step]) for i in range(0, len(inputs), step)])


def _decoded(decode: Decoder, paths: Sequence, num_workers: int, ahead: int) -> Iterator[tuple]:
    """(index, array or None, size, reason) for each path in order, decoded up to ``ahead`` files
    before the consumer asks for them."""
    if num_workers == 0:
        for i, path in enumerate(paths):
            yield (i, *decode(path))
        return
    with ThreadPoolExecutor(num_workers, thread_name_prefix="prodsearch-decode") as pool:
        pending: collections.deque[tuple[int, Future]] = collections.deque()
        for i, path in enumerate(paths):
            pending.append((i, pool.submit(decode, path)))
            if len(pending) > ahead:
                j, future = pending.popleft()
                yield (j, *future.result())
        while pending:
            j, future = pending.popleft()
            yield (j, *future.result())


def _batches(items: Iterator[tuple], size: int) -> Iterator[list[tuple]]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def preprocessed(paths: Sequence[str | os.PathLike], data_config: dict, num_workers: int = 2) -> np.ndarray:
    """The model inputs of the readable files among ``paths``, ``(n, 3, H, W)`` float32 (unreadable
    ones are left out): what int8 quantization calibrates on. The photos alone, without other views:
    their crops hold nothing the activations' ranges do not already cover."""
    decoded = _decoded(Decoder(data_config), paths, num_workers, 16)
    arrays = [x for _, x, _, _ in decoded if x is not None]
    return np.concatenate(arrays) if arrays else np.zeros((0, *Preprocess(data_config).input_shape), np.float32)


def embed_pil(encoder: Encoder, images: Sequence[Image.Image], views: int = 1,
              upsample_crops: bool = True) -> np.ndarray:
    """Embed in-memory images (upright) with the same preprocessing, ``views`` and
    ``upsample_crops``, as files."""
    preprocess = Preprocess(encoder.config.data_config)
    inputs = np.concatenate([view_inputs(to_rgb(img), views, preprocess, upsample_crops) for img in images])
    return fuse_views(encoder.encode(inputs), views)
