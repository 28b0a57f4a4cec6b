"""Rewrites of an exported ONNX model: constant shapes, prodsearch's metadata, int8 quantization.

timm's ``tf_`` models pad "same" at run time: ``torch.onnx.export`` writes each strided
convolution's padding as float arithmetic on the input's shape (Shape, Cast, Div, Ceil, ..., Pad).
:func:`fold_shapes` turns those into constant pads (ONNX Runtime's basic, standard-ONNX
optimisations with the batch fixed, then the batch made dynamic again): the float32 model runs 1.5x
faster, and int8 quantization no longer fake-quantizes shape arithmetic, which is what made a naive
int8 model's embeddings drift (cosine 0.73-0.92 to float32; 0.98 or more once folded). Nothing here
imports torch: an index's int8 model is made on the machine that serves it.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx
import onnxruntime as ort

from prodsearch import __version__
from prodsearch.retrieval.onnx_encoder import CONFIG_KEY, PRECISION_KEY

BATCH = "batch"  # the name of the dynamic batch axis of the input and the output


def fold_shapes(data: bytes) -> bytes:
    """``data`` with its shape computations folded into constants; the batch axis stays dynamic."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.add_free_dimension_override_by_name(BATCH, 1)
    with tempfile.TemporaryDirectory(prefix="prodsearch-onnx-") as tmp:
        options.optimized_model_filepath = str(Path(tmp) / "folded.onnx")
        ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        proto = onnx.load(options.optimized_model_filepath)
    for value in list(proto.graph.input) + list(proto.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = BATCH
    del proto.graph.value_info[:]  # shapes inferred with batch 1; inferred again below
    return onnx.shape_inference.infer_shapes(proto).SerializeToString()


def with_metadata(data: bytes, config: dict, precision: str) -> bytes:
    """``data`` with prodsearch's metadata (the embedder config, the precision) set."""
    proto = onnx.load_from_string(data)
    props = {p.key: p.value for p in proto.metadata_props}
    props.update({CONFIG_KEY: json.dumps(config, sort_keys=True), PRECISION_KEY: precision,
                  "prodsearch.version": __version__})
    del proto.metadata_props[:]
    for key, value in sorted(props.items()):
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "prodsearch"
    return proto.SerializeToString()


def quantize_int8(fp32: bytes, calibration: Iterable[np.ndarray], config: dict) -> bytes:
    """A static int8 (QDQ) model of a folded fp32 one, calibrated on batches of preprocessed photos
    (the catalog's own: what queries will look like).

    The recipe, chosen on Grocery Store's catalog photos (BENCHMARKS.md): per-channel int8
    weights, uint8 activations, MinMax ranges, the first convolution (the stem, which sees raw
    pixels; an ensemble's stems and the resizing before them) kept in float. Protocol B top-1
    63.10 against fp32's 63.46; cosine to fp32 0.995 mean, 0.98 minimum; 2x the folded fp32
    model's speed on a CPU with VNNI. Without VNNI the weights keep 7 bits (``reduce_range``, as
    ONNX Runtime advises: its AVX2 uint8 x int8 kernels saturate otherwise; cosine to fp32 0.96 mean
    became 0.98 on an AVX2 EPYC).
    """
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    from prodsearch.retrieval.runtime import has_int8_dot_product

    class Reader(CalibrationDataReader):
        def __init__(self, name: str):
            self.batches = iter({name: np.ascontiguousarray(b, dtype=np.float32)} for b in calibration)

        def get_next(self):
            return next(self.batches, None)

    fp32 = fold_shapes(fp32)  # prodsearch's exports are folded already; a foreign file may not be
    proto = onnx.load_from_string(fp32)
    stems = _stems(proto.graph)
    with tempfile.TemporaryDirectory(prefix="prodsearch-int8-") as tmp:
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(fp32)
        advice = _DropAdvice()
        logging.getLogger().addFilter(advice)  # it logs on the root logger; only its own lines are dropped
        try:
            quantize_static(str(source), str(target), Reader(proto.graph.input[0].name),
                            quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, per_channel=True, reduce_range=not has_int8_dot_product(),
                            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=stems)
        finally:
            logging.getLogger().removeFilter(advice)
        return with_metadata(target.read_bytes(), config, "int8")


def _stems(graph: onnx.GraphProto) -> list[str]:
    """The first convolution on every path from the input (each backbone's stem: one per member of an
    ensemble) and the Resize nodes that reach them: what sees raw pixels, kept in float."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found, seen, frontier = [], set(), [graph.input[0].name]
    while frontier:
        for node in consumers.get(frontier.pop(), []):
            if node.name in seen:
                continue
            seen.add(node.name)
            if node.op_type in ("Conv", "Resize"):
                found.append(node.name)
            if node.op_type != "Conv":
                frontier += node.output
    return found


class _DropAdvice(logging.Filter):
    """onnxruntime.quantization advises ``quant_pre_process`` on every call; the folded graph is what
    that advice is for (it does not fold these pads, :func:`fold_shapes` does)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()
