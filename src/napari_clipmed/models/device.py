"""One place that decides the device (CUDA, then MPS, then CPU) and the inference precision."""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

from napari_clipmed.errors import InputError

Precision = Literal["auto", "fp32", "fp16", "bf16"]


def check_device(device: str | torch.device) -> torch.device:
    """`device` as a torch device, or one `InputError` when it is unknown or not present here."""
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"unknown device {str(device)!r}; use cpu, cuda (or cuda:N) or mps") from None
    if target.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {str(device)!r} asked for, but this machine has no usable CUDA GPU; use --device cpu")
    if target.type == "cuda" and target.index is not None and target.index >= torch.cuda.device_count():
        raise InputError(f"device {str(device)!r}: there are only {torch.cuda.device_count()} CUDA GPU(s)")
    mps = getattr(torch.backends, "mps", None)
    if target.type == "mps" and not (mps is not None and mps.is_available()):
        raise InputError("device 'mps' asked for, but Apple MPS is not available here; use --device cpu")
    if target.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"unsupported device {str(device)!r}; use cpu, cuda (or cuda:N) or mps")
    return target


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """`device` if given (checked), else the best one present: CUDA, then Apple MPS, then CPU."""
    if device is not None:
        return check_device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_precision(device: torch.device, precision: Precision = "auto") -> Literal["fp32", "fp16", "bf16"]:
    """On a GPU `auto` means bf16 where supported, else fp16; on a CPU fp32 (`precision.decide`
    measures whether bf16 is faster there, once a model is loaded)."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "mps":
        return "fp16"
    return "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """An autocast context for GPU half precision; a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def describe(device: torch.device, precision: str, reason: str = "") -> str:
    """A short human label, e.g. 'CUDA (NVIDIA H100), bf16', 'CPU, bf16 (AMX)' or 'CPU, fp32 (bf16 not faster)'."""
    why = f" ({reason})" if reason else ""
    if device.type == "cuda":
        return f"CUDA ({torch.cuda.get_device_name(device)}), {precision}{why}"
    return f"{device.type.upper()}, {precision}{why}"
