"""``create_encoder``: a model ready to embed, on the runtime asked for, like ``create_embedder`` one
level up. Models come by name, as a checkpoint, as a prodsearch ONNX file, or as an
:class:`Embedder` in memory; torch is imported only where the model must come from torch.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Union

from prodsearch.choices import DEFAULT_MODEL
from prodsearch.errors import DeviceError
from prodsearch.retrieval.runtime import Encoder, resolve_runtime

if TYPE_CHECKING:
    from prodsearch.retrieval.embedder import Embedder
    from prodsearch.retrieval.onnx_encoder import OnnxEncoder

log = logging.getLogger(__name__)

ModelSource = Union[str, os.PathLike, "Embedder", Encoder]


def is_onnx_path(model: object) -> bool:
    return isinstance(model, (str, os.PathLike)) and os.fspath(model).lower().endswith(".onnx")


def is_encoder(model: object) -> bool:
    return hasattr(model, "encode") and hasattr(model, "runtime")


def create_encoder(model: ModelSource = DEFAULT_MODEL, *, runtime: str = "auto", device: str = "auto",
                   precision: str = "auto") -> Encoder:
    """An encoder for ``model`` on ``runtime`` (``auto``: torch on a CUDA GPU, ONNX Runtime elsewhere).

    An ONNX encoder made from a torch model is exported in memory and keeps the exported bytes in
    ``model_bytes``, so that an index can store them.
    """
    if is_encoder(model):
        return model
    runtime, device = resolve_runtime(runtime, device, precision)
    if is_onnx_path(model):
        if runtime != "onnx":
            raise DeviceError(f"{model} is an ONNX model, which runs on the onnx runtime: leave out --runtime torch, "
                              "or pass the checkpoint it was exported from")
        return _onnx_file(os.fspath(model))
    embedder = create_embedder(model) if isinstance(model, (str, os.PathLike)) else model
    if runtime == "torch":
        from prodsearch.retrieval.torch_encoder import TorchEncoder

        return TorchEncoder(embedder, device, precision)
    return onnx_from_torch(embedder)


def onnx_from_torch(embedder: "Embedder") -> "OnnxEncoder":
    """Export ``embedder`` and open it in ONNX Runtime (keeping the bytes in ``model_bytes``)."""
    from prodsearch.retrieval.onnx_encoder import OnnxEncoder
    from prodsearch.retrieval.onnx_export import export_onnx

    start = time.perf_counter()
    data = export_onnx(embedder)
    log.info("exported %s to ONNX in %.1fs", embedder.config.label, time.perf_counter() - start)
    return OnnxEncoder(data, keep_bytes=True, name=f"the ONNX export of {embedder.config.label}")


def _onnx_file(path: str) -> "OnnxEncoder":
    from prodsearch.retrieval.onnx_encoder import OnnxEncoder, OnnxModelError

    try:
        data = open(path, "rb").read()
    except OSError as exc:
        raise OnnxModelError(f"cannot read the ONNX model {path} ({exc.strerror or exc})") from None
    return OnnxEncoder(data, keep_bytes=True, name=path)


def create_embedder(model: str | os.PathLike, **kwargs) -> "Embedder":
    """:func:`prodsearch.retrieval.factory.create_embedder`, importing torch only when called."""
    from prodsearch.retrieval.factory import create_embedder as create

    return create(model, **kwargs)
