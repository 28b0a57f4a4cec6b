"""Export an embedder to ONNX: the whole forward (backbone, pooling, head, L2 normalisation) with a
dynamic batch axis and a pinned opset, its shape computations folded into constants
(:func:`~prodsearch.retrieval.onnx_graph.fold_shapes`); its :class:`EmbedderConfig` travels in the
file's metadata, so an ONNX file describes the vectors it computes as an index manifest does."""

from __future__ import annotations

import copy
import io
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from prodsearch.catalog.files import write_atomically
from prodsearch.errors import ProdsearchError
from prodsearch.retrieval.checkpoint import CheckpointError
from prodsearch.retrieval.config import EmbedderConfig
from prodsearch.retrieval.embedder import Embedder
from prodsearch.retrieval.onnx_graph import BATCH, fold_shapes, with_metadata

OPSET = 17  # pinned: every onnxruntime since 1.14 runs it; a newer torch must not change the files it writes
INPUT, OUTPUT = "images", "embeddings"  # the batch axis of both is BATCH


def export_onnx(embedder: Embedder) -> bytes:
    """The embedder as an fp32 ONNX model (bytes). The embedder itself is left where it is."""
    model = copy.deepcopy(embedder).to("cpu", torch.float32, memory_format=torch.contiguous_format).eval()
    example = torch.zeros((2, *embedder.config.data_config["input_size"]), dtype=torch.float32)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode():
        # The TorchScript exporter is deprecated in favour of torch.export's, which needs onnxscript
        # and gives the same graph for these convolutional models; its warnings say only that.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, example, buffer, input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: BATCH}, OUTPUT: {0: BATCH}}, opset_version=OPSET,
                          dynamo=False)
    return with_metadata(fold_shapes(buffer.getvalue()), embedder.config.to_dict(), "fp32")


@dataclass
class ExportReport:
    path: Path
    config: EmbedderConfig
    size_bytes: int
    seconds: float
    max_difference: float  # largest |ONNX Runtime - torch| over a test batch's embeddings

    def to_dict(self) -> dict:
        return {"path": str(self.path), "model": self.config.label, "weights": self.config.weights,
                "embed_dim": self.config.embed_dim, "input_size": self.config.data_config["input_size"][-1],
                "opset": OPSET, "size_bytes": self.size_bytes, "seconds": round(self.seconds, 3),
                "max_difference": self.max_difference}


def export_model(model: str | os.PathLike, out: str | os.PathLike, *, img_size: int | None = None) -> ExportReport:
    """Export a model (name or checkpoint) to the ONNX file ``out``, written whole or not at all, and
    check that ONNX Runtime computes the embeddings torch does."""
    from prodsearch.retrieval.factory import create_embedder, is_checkpoint_path
    from prodsearch.retrieval.onnx_encoder import OnnxEncoder

    if img_size is not None and is_checkpoint_path(model):
        raise CheckpointError("--img-size applies to model names; a checkpoint keeps the size it was trained at")
    start = time.perf_counter()
    embedder = create_embedder(model, img_size=img_size)
    data = export_onnx(embedder)
    batch = np.random.default_rng(0).standard_normal((2, *embedder.config.data_config["input_size"]), dtype=np.float32)
    with torch.inference_mode():
        expected = embedder.eval()(torch.from_numpy(batch)).numpy()
    difference = float(np.abs(OnnxEncoder(data).encode(batch) - expected).max())
    out = Path(out)
    try:
        write_atomically(out, data)
    except OSError as exc:
        raise ProdsearchError(f"cannot write {out} ({exc.strerror or exc}); choose a writable --out") from None
    return ExportReport(out, embedder.config, len(data), time.perf_counter() - start, difference)
