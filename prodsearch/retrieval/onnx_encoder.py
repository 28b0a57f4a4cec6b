"""The ONNX Runtime: embeddings on the CPU at the hardware's speed, without importing torch.

A prodsearch ONNX model carries its :class:`EmbedderConfig` in its metadata
(:mod:`.onnx_export` writes it), so the session alone knows what its vectors are.
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort

from prodsearch.errors import ProdsearchError
from prodsearch.retrieval.config import EmbedderConfig

CONFIG_KEY = "prodsearch.embedder"
PRECISION_KEY = "prodsearch.precision"
# Fastest batch measured on a 2-core CPU (benchmarks/embed_throughput.py, BENCHMARKS.md).
DEFAULT_BATCH_SIZE = 8


class OnnxModelError(ProdsearchError):
    """A file that is not a readable prodsearch ONNX model."""


class OnnxEncoder:
    """An :class:`~prodsearch.retrieval.runtime.Encoder` on an ONNX Runtime CPU session."""

    runtime = "onnx"
    device = "cpu"

    def __init__(self, data: bytes, *, threads: int | None = None, name: str = "ONNX model",
                 keep_bytes: bool = False):
        """``keep_bytes`` keeps the serialised model in ``model_bytes`` (for an index to store);
        ``threads`` intra-op threads (default: one per physical core)."""
        self._data, self.name = data, name
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0  # 0: one per physical core
        options.log_severity_level = 3  # errors only: its warnings are about graph optimisations
        # Idle threads sleep instead of spinning: the cores are shared with the decoding threads
        # (Grocery Store photos, lite0 fp32, 2 cores: 164-177 img/s against 150-161 spinning).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types per failure
            raise OnnxModelError(f"{name} is not a readable ONNX model ({type(exc).__name__}: {exc})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            self.config = EmbedderConfig.from_dict(json.loads(meta[CONFIG_KEY]))
        except (KeyError, ValueError, TypeError) as exc:
            raise OnnxModelError(f"{name} is not a prodsearch ONNX model (its metadata lacks the embedder: {exc}); "
                                 "export one with: prodsearch export MODEL --out FILE.onnx") from None
        self.precision = meta.get(PRECISION_KEY, "fp32")
        self.input = self.session.get_inputs()[0].name
        self.dim = self.config.embed_dim
        self.batch_size = DEFAULT_BATCH_SIZE
        self.model_bytes = data if keep_bytes else None
        self.fp32: OnnxEncoder | None = None  # an int8 model made here: the fp32 model it was quantized from

    def with_threads(self, threads: int) -> "OnnxEncoder":
        """The same model on a session of ``threads`` intra-op threads. A server that runs one model
        step per request wants 1: concurrent requests then use the cores in parallel without the
        per-operator hand-offs between threads that small batches pay for."""
        copy = OnnxEncoder(self._data, threads=threads, name=self.name)
        copy.precision, copy.batch_size, copy.model_bytes = self.precision, self.batch_size, self.model_bytes
        return copy

    def serialized(self) -> bytes:
        """The model's bytes: another process (of a torchrun run) opens the same model from them."""
        return self._data

    def encode(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input: np.ascontiguousarray(batch, dtype=np.float32)})[0]
        # The graph normalises; again in float32 so that int8 outputs are unit length too.
        return (out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)).astype(np.float32)
