"""Where an opened index's searches run: FAISS on the CPU, faiss-gpu, or the torch exact search on a
GPU. Decided without importing torch unless the torch search is chosen."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import faiss
import numpy as np

from prodsearch.indexer.search_backend import FaissSearch, VectorSearch
from prodsearch.retrieval.runtime import cuda_available

log = logging.getLogger(__name__)


def resolve_search_device(device: str = "auto") -> str:
    """``auto``: the GPU when torch sees one, else the CPU."""
    return ("cuda" if cuda_available() else "cpu") if device == "auto" else device


def place_for_search(index: faiss.Index, stored: Callable[[], tuple[np.ndarray, np.ndarray]], factory: str,
                     device: str, backend: str | None = None) -> VectorSearch:
    """Where searches of an opened index run. On CUDA: FAISS's own GPU index when faiss-gpu is
    installed, else (exact indexes) :class:`TorchExactIndex` on the GPU; elsewhere the FAISS CPU
    index as loaded. ``backend="torch"`` forces the torch path (on any device: tests use the CPU);
    ``stored()`` reads (ids, vectors) from the catalog, called only for it."""
    device = str(device)
    if backend is None and not device.startswith("cuda"):
        return FaissSearch(index)
    if backend is None and faiss.get_num_gpus() > 0:  # faiss-gpu (faiss-cpu reports 0)
        if gpu_can_hold(factory):
            log.info("searching on the GPU with faiss-gpu")
            return FaissSearch(faiss.index_cpu_to_all_gpus(index), on_gpu=True)
        log.info("faiss-gpu cannot place a %s index on the GPU; it is searched on the CPU", factory)
        return FaissSearch(index)
    if backend == "faiss" or (backend is None and factory not in ("Flat", "auto")):
        return FaissSearch(index)  # approximate indexes stay with FAISS on the CPU without faiss-gpu
    ids, vecs = stored()
    log.info("searching %d vectors with torch on %s", len(ids), device)
    from prodsearch.indexer.torch_search import TorchExactIndex  # torch: only for this path

    return TorchExactIndex(vecs, ids, device=device)


# The index types FAISS has GPU versions of: flat, and inverted lists over flat, scalar-quantised or
# PQ codes. Graphs (HNSW), re-ranking (Refine) and IVF with an HNSW quantizer stay on the CPU.
_GPU_TYPES = re.compile(r"Flat|IVF\d+,(Flat|SQ(4|6|8|fp16)|PQ\d+(x\d+)?)")


def gpu_can_hold(factory: str) -> bool:
    return _GPU_TYPES.fullmatch(factory) is not None
