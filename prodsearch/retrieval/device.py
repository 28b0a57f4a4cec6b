"""Choosing where the model runs: ``auto`` takes CUDA when present, nothing assumes it."""

from __future__ import annotations

import torch

from prodsearch.choices import DEVICE_CHOICES, PRECISION_CHOICES
from prodsearch.errors import DeviceError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``auto``/``cpu``/``cuda`` (or ``cuda:N``) into a device, failing clearly if CUDA is absent."""
    if isinstance(device, torch.device):
        return device
    name = (device or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise DeviceError(f"unknown device {device!r}; use one of {', '.join(DEVICE_CHOICES)}")
    return torch.device(name)


def default_batch_size(device: torch.device, img_size: int = 224) -> int:
    """The fastest inference batch measured on a 2-core CPU: 8 up to ~300 px, 1 above, where a
    batch's activations fall out of the cache (lite0 at 448 px: 41 img/s at batch 1, 12.5 at 8).
    GPUs want large batches."""
    if device.type == "cuda":
        return 128
    return 8 if img_size <= 300 else 1


def precision_name(dtype: torch.dtype | None) -> str:
    """How options and reports name what :func:`inference_dtype` returned."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def inference_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The reduced precision inference autocasts to, ``None`` for plain float32.

    ``auto`` takes bfloat16 where the hardware computes it natively: CUDA GPUs that support it
    (AMP), CPUs with AVX512-BF16 or AMX (lite0 runs 2.9x faster on this project's EPYC VM and its
    embeddings keep a cosine of 0.997 or more with float32's, ``benchmarks/embed_throughput.py``). Elsewhere bfloat16 would be
    emulated, slower than float32, so ``auto`` keeps float32 there.
    """
    if precision not in PRECISION_CHOICES:
        raise DeviceError(f"unknown precision {precision!r}; use one of {', '.join(PRECISION_CHOICES)}")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return torch.bfloat16 if device.type == "cpu" and native else None
