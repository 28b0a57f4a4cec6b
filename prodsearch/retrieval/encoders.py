"""``create_encoder``: a model ready to embed, on the runtime asked for, like ``create_embedder`` one
level up. Models come by name, as a checkpoint, as a prodsearch ONNX file, or as an
:class:`Embedder` in memory; torch is imported only where the model must come from torch.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence, Union

from prodsearch.choices import DEFAULT_MODEL
from prodsearch.errors import DeviceError, ProdsearchError
from prodsearch.retrieval.runtime import Encoder, auto_precision, resolve_runtime

if TYPE_CHECKING:
    from prodsearch.retrieval.embedder import Embedder
    from prodsearch.retrieval.onnx_encoder import OnnxEncoder

log = logging.getLogger(__name__)

ModelSource = Union[str, os.PathLike, "Embedder", Encoder]
# Catalog photos int8 quantization calibrates on: 256 were no better on Grocery Store (BENCHMARKS.md).
CALIBRATION_PHOTOS = 64


class CalibrationError(ProdsearchError):
    """int8 was asked for where no catalog photo can be read to calibrate it."""


def is_onnx_path(model: object) -> bool:
    return isinstance(model, (str, os.PathLike)) and os.fspath(model).lower().endswith(".onnx")


def is_encoder(model: object) -> bool:
    return hasattr(model, "encode") and hasattr(model, "runtime")


def create_encoder(model: ModelSource = DEFAULT_MODEL, *, runtime: str = "auto", device: str = "auto",
                   precision: str = "auto", calibration: Sequence[str | os.PathLike] = ()) -> Encoder:
    """An encoder for ``model`` on ``runtime`` (``auto``: torch on a CUDA GPU, ONNX Runtime elsewhere).

    An ONNX encoder made from a torch model is exported in memory and keeps the exported bytes in
    ``model_bytes``, so that an index can store them. int8 (``precision="int8"``, or ``auto`` where
    :func:`~prodsearch.retrieval.runtime.auto_precision` picks it) is calibrated on the photos of
    ``calibration``, the catalog's own, and keeps its fp32 model in ``fp32``: ``index`` measures on
    the catalog whether int8 keeps its answers and falls back to that fp32 model where it does not.
    ``auto`` without calibration photos stays fp32.
    """
    if is_encoder(model):
        return model
    runtime, device = resolve_runtime(runtime, device, precision)
    if runtime == "torch":
        if is_onnx_path(model):
            raise DeviceError(f"{model} is an ONNX model, which runs on the onnx runtime: leave out --runtime torch, "
                              "or pass the checkpoint it was exported from")
        from prodsearch.retrieval.torch_encoder import TorchEncoder

        return TorchEncoder(as_embedder(model), device, precision)
    encoder = _onnx_file(os.fspath(model)) if is_onnx_path(model) else onnx_from_torch(as_embedder(model))
    if wants_int8(precision, bool(calibration)):
        return as_int8(encoder, calibration, required=precision == "int8")
    return encoder


def wants_int8(precision: str, can_calibrate: bool) -> bool:
    """Whether the ONNX runtime should make or take int8: asked for (``can_calibrate`` or not: the
    caller then says why it cannot), or ``auto`` where it is faster and calibration photos are at
    hand. For ``auto`` this is a candidate, not the answer: an index measures whether int8 keeps
    its shop's answers before it embeds with it (:mod:`prodsearch.indexer.precision_check`)."""
    if precision == "int8":
        return True
    return precision == "auto" and can_calibrate and auto_precision("onnx", "cpu") == "int8"


def as_int8(fp32: "OnnxEncoder", photos: Sequence[str | os.PathLike], required: bool = True) -> "OnnxEncoder":
    """The int8 model of an fp32 ONNX encoder, calibrated on CALIBRATION_PHOTOS spread over
    ``photos`` (kept in ``model_bytes`` like an export). Where none can be read: an error if int8 is
    ``required``, else the fp32 encoder."""
    from prodsearch.retrieval.embedding import preprocessed
    from prodsearch.retrieval.onnx_encoder import OnnxEncoder
    from prodsearch.retrieval.onnx_graph import quantize_int8

    if fp32.precision == "int8":
        return fp32
    photos = list(photos)
    arrays = preprocessed(photos[:: max(1, len(photos) // CALIBRATION_PHOTOS)][:CALIBRATION_PHOTOS],
                          fp32.config.data_config)
    if not len(arrays) and not required:
        log.info("no calibration photo can be read: embedding in fp32")
        return fp32
    if not len(arrays):
        raise CalibrationError("int8 is calibrated on the catalog's photos and none of them can be read here; use "
                               "--precision fp32, or make the int8 model where the photos are: "
                               "prodsearch export --index DIR --precision int8")
    start = time.perf_counter()
    data = quantize_int8(fp32.model_bytes, [arrays[i:i + 8] for i in range(0, len(arrays), 8)], fp32.config.to_dict())
    log.info("quantized %s to int8 on %d catalog photos in %.1fs", fp32.config.label, len(arrays),
             time.perf_counter() - start)
    int8 = OnnxEncoder(data, keep_bytes=True, name=f"the int8 model of {fp32.config.label}")
    int8.fp32 = fp32  # an index keeps both: fp32 for --precision fp32 and CPUs without VNNI
    return int8


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
        data = Path(path).read_bytes()
    except OSError as exc:
        raise OnnxModelError(f"cannot read the ONNX model {path} ({exc.strerror or exc}); give the path of a file "
                             "written by: prodsearch export MODEL --out FILE.onnx") from None
    return OnnxEncoder(data, keep_bytes=True, name=path)


def create_embedder(model: str | os.PathLike, **kwargs) -> "Embedder":
    """:func:`prodsearch.retrieval.factory.create_embedder`, importing torch only when called."""
    from prodsearch.retrieval.factory import create_embedder as create

    return create(model, **kwargs)


def as_embedder(model: "str | os.PathLike | Embedder") -> "Embedder":
    """The torch embedder a name or checkpoint path builds; an :class:`Embedder` as it is."""
    return create_embedder(model) if isinstance(model, (str, os.PathLike)) else model
