"""Choosing the runtime (ONNX Runtime or torch), the device and the precision, without importing torch.

``auto`` runs ONNX Runtime on the CPU (2.2x torch's fp32 speed on an AVX2 CPU, and it starts in a
fraction of a second) and torch on a CUDA GPU. The runtime is not part of an index's identity: both
compute the same vectors (``tests/test_runtimes.py``), so an index built with one is queried with
the other.
"""

from __future__ import annotations

import os
from typing import Protocol

import numpy as np

from prodsearch.choices import DEVICE_CHOICES, PRECISION_CHOICES, RUNTIME_CHOICES
from prodsearch.errors import DeviceError
from prodsearch.retrieval.config import EmbedderConfig

# Precisions each runtime computes: bf16 needs torch (AVX512-BF16/AMX or a GPU), int8 ONNX Runtime.
RUNTIME_PRECISIONS = {"onnx": ("fp32", "int8"), "torch": ("fp32", "bf16")}


class Encoder(Protocol):
    """A model ready to run: preprocessed images in, L2-normalised embeddings out (numpy both)."""

    config: EmbedderConfig  # what the vectors are: compared with an index's manifest
    runtime: str  # "onnx" or "torch"
    precision: str  # "fp32", "bf16", "fp16" or "int8"
    device: str  # "cpu", "cuda", "cuda:1" ...
    batch_size: int  # the fastest batch measured for this runtime and device
    dim: int  # width of the output

    def encode(self, batch: np.ndarray) -> np.ndarray:
        """``(n, 3, H, W)`` float32 in, ``(n, dim)`` float32 out; safe to call from several threads."""
        ...


def describe(encoder: Encoder) -> str:
    """How ``-v`` and ``info`` name the path a command took, e.g. ``onnx fp32 on cpu``."""
    return f"{encoder.runtime} {encoder.precision} on {encoder.device}"


def check_choice(kind: str, value: str, choices: tuple[str, ...]) -> str:
    value = (value or "auto").lower()
    if value not in choices and not (kind == "device" and value.startswith("cuda:")):
        raise DeviceError(f"unknown {kind} {value!r}; use one of {', '.join(choices)}")
    return value


def resolve_runtime(runtime: str = "auto", device: str = "auto", precision: str = "auto") -> tuple[str, str]:
    """(runtime, device) for a request: ``auto`` is torch on a CUDA GPU, ONNX Runtime elsewhere or
    when the precision asks for it. Decided without importing torch unless a GPU may be there."""
    runtime = check_choice("runtime", runtime, RUNTIME_CHOICES)
    device = check_choice("device", device, DEVICE_CHOICES)
    precision = check_choice("precision", precision, PRECISION_CHOICES)
    if device == "auto":
        device = "cuda" if runtime != "onnx" and precision != "int8" and cuda_available() else "cpu"
    if runtime == "auto":
        runtime = "torch" if device.startswith("cuda") or precision == "bf16" else "onnx"
    if runtime == "onnx" and device.startswith("cuda"):
        raise DeviceError("the onnx runtime runs on the CPU; on a GPU use --runtime torch (or --device cpu)")
    if precision != "auto" and precision not in RUNTIME_PRECISIONS[runtime]:
        other = next(r for r, p in RUNTIME_PRECISIONS.items() if precision in p)
        raise DeviceError(f"--precision {precision} runs on the {other} runtime, not {runtime}; "
                          f"use --runtime {other} or --precision auto")
    if device.startswith("cuda") and not cuda_available():
        raise DeviceError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
    return runtime, device


# CPU instructions with 8-bit dot products, which make ONNX Runtime's int8 kernels fast.
INT8_DOT_PRODUCT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def auto_precision(runtime: str, device: str) -> str:
    """What ``--precision auto`` would run, by the hardware alone: on torch, bf16 where the hardware
    computes it natively (see :func:`~prodsearch.retrieval.device.inference_dtype`); on ONNX Runtime,
    int8 on CPUs with 8-bit dot products (VNNI, AMX: 2x the fp32 model, BENCHMARKS.md), fp32
    elsewhere, where int8 has not been measured faster. int8 is then only a candidate: an index
    measures on its shop's photos whether int8 keeps fp32's answers and embeds in fp32 where it
    does not (:mod:`prodsearch.indexer.precision_check`); an index without an int8 model, or one
    that refused int8, answers in fp32."""
    if runtime == "onnx":
        return "int8" if has_int8_dot_product() else "fp32"
    import torch

    from prodsearch.retrieval.device import inference_dtype, precision_name

    return precision_name(inference_dtype(torch.device(device), "auto"))


def has_int8_dot_product() -> bool:
    """Whether the CPU has VNNI or AMX (Linux: read from /proc/cpuinfo; elsewhere assumed not)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return any(flag in flags for flag in INT8_DOT_PRODUCT_FLAGS)


def cuda_available() -> bool:
    """Whether torch sees a CUDA GPU; a machine without the NVIDIA driver is answered without
    importing torch (4 s), which is most CPU machines."""
    if not (os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidia0")):
        return False
    import torch

    return torch.cuda.is_available()
