"""Exact inner-product search as a chunked matrix multiply + top-k in torch.

For CUDA machines without faiss-gpu: the catalog vectors live on the GPU in float16 (12.4M x 512
is 12.7 GB) and each chunk's scores are reduced to its top-k before the next, so memory stays at
one chunk of scores. The same code runs on the CPU (in float32), where the tests check it returns
FAISS's exact neighbours.
"""

from __future__ import annotations

import numpy as np
import torch


class TorchExactIndex:
    """Exact search in torch behind :class:`~prodsearch.indexer.search_backend.VectorSearch`."""

    def __init__(self, vectors: np.ndarray, ids: np.ndarray, device: str = "cpu",
                 dtype: torch.dtype | None = None, chunk: int = 1 << 20):
        self.device = torch.device(device)
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        self.vectors = torch.empty(vectors.shape, dtype=self.dtype, device=self.device)
        for start in range(0, len(vectors), chunk):  # uploaded in chunks: no second full copy in host memory
            part = np.array(vectors[start:start + chunk], dtype=np.float32)
            self.vectors[start:start + chunk] = torch.from_numpy(part).to(self.device, self.dtype)
        self.ids = torch.from_numpy(np.asarray(ids, dtype=np.int64)).to(self.device)
        self.chunk = chunk

    @property
    def ntotal(self) -> int:
        return len(self.ids)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        added = torch.from_numpy(np.asarray(vectors, dtype=np.float32)).to(self.device, self.dtype)
        self.vectors = torch.cat([self.vectors, added])
        self.ids = torch.cat([self.ids, torch.from_numpy(np.asarray(ids, dtype=np.int64)).to(self.device)])

    def remove(self, ids: np.ndarray) -> bool:
        keep = ~torch.isin(self.ids, torch.from_numpy(np.asarray(ids, dtype=np.int64)).to(self.device))
        self.vectors, self.ids = self.vectors[keep], self.ids[keep]
        return True

    @torch.inference_mode()
    def search(self, queries: np.ndarray, k: int, among: np.ndarray | None = None,
               where: object = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (similarities, ids), best first; -1 ids pad rows when fewer than k vectors
        (of ``among``, when given) qualify. ``where`` (fields) is ``among`` described otherwise: unused."""
        q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(self.device, self.dtype)
        allowed = None if among is None else torch.isin(self.ids, torch.from_numpy(np.asarray(among, dtype=np.int64)).to(self.device))
        best_scores = torch.full((len(q), 0), float("-inf"), device=self.device)
        best_ids = torch.zeros((len(q), 0), dtype=torch.int64, device=self.device)
        for start in range(0, self.ntotal, self.chunk):
            scores = (q @ self.vectors[start:start + self.chunk].T).float()  # accumulate in fp32 on output
            if allowed is not None:
                scores[:, ~allowed[start:start + self.chunk]] = float("-inf")
            top = torch.topk(scores, min(k, scores.shape[1]), dim=1)
            merged_scores = torch.cat([best_scores, top.values], dim=1)
            merged_ids = torch.cat([best_ids, self.ids[start:start + self.chunk][top.indices]], dim=1)
            keep = torch.topk(merged_scores, min(k, merged_scores.shape[1]), dim=1)
            best_scores, best_ids = keep.values, torch.gather(merged_ids, 1, keep.indices)
        best_ids = torch.where(torch.isinf(best_scores), -1, best_ids)  # filtered out: not a neighbour
        pad = k - best_scores.shape[1]
        scores_out = np.pad(best_scores.cpu().numpy(), ((0, 0), (0, pad)), constant_values=-np.inf)
        ids_out = np.pad(best_ids.cpu().numpy(), ((0, 0), (0, pad)), constant_values=-1)
        return scores_out.astype(np.float32), ids_out
