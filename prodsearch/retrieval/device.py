"""Choosing where the model runs: ``auto`` takes CUDA when present, nothing assumes it."""

from __future__ import annotations

import torch

from prodsearch.errors import DeviceError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


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


def default_batch_size(device: torch.device) -> int:
    """Batch 8 is fastest on a small CPU (bigger batches fall out of cache); GPUs want large ones."""
    return 128 if device.type == "cuda" else 8
