"""`--device auto|cpu|cuda[:N]` for every command: CUDA when present, fp32 CPU otherwise."""

from __future__ import annotations

import torch

from meddiff.errors import MeddiffError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu; an explicit CUDA device on a machine without CUDA is an error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise MeddiffError(f"--device {device!r} is not a device; use auto, cpu or cuda[:N]") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise MeddiffError(f"--device {device}: CUDA is not available on this machine; use --device cpu or auto")
    return resolved
