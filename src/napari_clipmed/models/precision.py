"""Which precision the image tower runs in on a CPU: bf16 where the CPU's bf16 units make it faster.

Three parts, so the decision is testable without the hardware:

- `cpuinfo.bf16_units` reads the CPU's flags (`/proc/cpuinfo`): `amx_bf16` (Intel AMX tiles) or
  `avx512_bf16` (AVX-512 BF16 dot products, e.g. recent Intel Xeons and AMD Zen 4/5); without either,
  bf16 runs in software and is slower than fp32, so `auto` stays at fp32 without measuring anything.
- `probe` times the encoder's own forward in both precisions on a fixed probe batch (interleaved
  rounds, the best of each, so a busy machine's slow spells do not decide) and compares the
  embeddings: `ProbeTimings`.
- `choose_precision` is a pure function of the units and those timings: bf16 only when it is clearly
  faster (`MIN_SPEEDUP`) and agrees with fp32 (`MIN_COSINE`); otherwise fp32, with the reason.

Only the image tower runs in bf16 (`bf16_copy` casts a copy of it, inputs included: `torch.autocast`
around the fp32 model was measured slower than fp32 itself); text, prototypes and the softmax stay fp32.
"""

from __future__ import annotations

import copy
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from napari_clipmed.errors import InputError
from napari_clipmed.models.cpuinfo import bf16_units

if TYPE_CHECKING:
    from napari_clipmed.models.model import ClipModel

CpuPrecision = Literal["fp32", "bf16"]

MIN_COSINE = 0.999  # bf16 embeddings must agree with fp32 at least this well on every probe image
MIN_SPEEDUP = 1.2  # and be this much faster, or fp32 stays ("clearly faster", not noise)
PROBE_MIN_PARAMS = 5_000_000  # smaller image towers (test models) stay fp32 without a probe
PROBE_TOKENS = 512  # tokens per probe batch: ViT-B/16 2 images, B/32 10 (about 2 s for B/16 on 2 cores)


@dataclass(frozen=True)
class ProbeTimings:
    """What the probe measured: best seconds per probe batch in each precision, and the agreement."""

    fp32_seconds: float
    bf16_seconds: float
    min_cosine: float

    @property
    def speedup(self) -> float:
        """fp32 time over bf16 time (above 1: bf16 is faster)."""
        return self.fp32_seconds / self.bf16_seconds if self.bf16_seconds > 0 else math.inf


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision an image tower runs in, and why (`reason` is short, for labels)."""

    precision: str
    reason: str
    detail: str = ""
    units: str | None = None
    timings: ProbeTimings | None = None

    def to_dict(self) -> dict:
        """For run configs: precision, reason, detail, units and the probe's numbers."""
        return asdict(self)


def choose_precision(
    units: str | None,
    timings: ProbeTimings | None,
    *,
    min_speedup: float = MIN_SPEEDUP,
    min_cosine: float = MIN_COSINE,
) -> PrecisionChoice:
    """`auto` on a CPU: bf16 only with bf16 units, a clear measured speed-up and agreeing embeddings."""
    if units is None:
        return PrecisionChoice("fp32", "no bf16 units", "the CPU reports neither amx_bf16 nor avx512_bf16")
    if timings is None:
        return PrecisionChoice("fp32", "not probed", f"{units} present, but this model was not measured", units)
    numbers = (f"bf16 {timings.bf16_seconds * 1000:.0f} ms vs fp32 {timings.fp32_seconds * 1000:.0f} ms per probe "
               f"batch ({timings.speedup:.2f}x), min cosine {timings.min_cosine:.5f}")
    if not math.isfinite(timings.min_cosine) or timings.min_cosine < min_cosine:
        return PrecisionChoice("fp32", "bf16 disagrees", f"{numbers}; needs cosine >= {min_cosine}", units, timings)
    if not timings.speedup >= min_speedup:
        return PrecisionChoice("fp32", "bf16 not faster", f"{numbers}; needs >= {min_speedup}x", units, timings)
    return PrecisionChoice("bf16", units, numbers, units, timings)


def requested(precision: str) -> PrecisionChoice:
    """A precision the user set (`--precision`, the widget's setting): no probe, no second guess."""
    return PrecisionChoice(precision, "requested", f"{precision} set by the user")


def probe(
    forward: Callable[[str, torch.Tensor], torch.Tensor], pixels: torch.Tensor, *, rounds: int = 2
) -> ProbeTimings:
    """Time `forward(precision, pixels)` for fp32 and bf16 in interleaved rounds; compare the outputs.

    A first call of each (untimed) warms the kernels and gives the embeddings compared; each
    precision's time is its best round, so a slow spell of a shared machine does not decide.
    """
    with torch.inference_mode():
        reference = nn.functional.normalize(forward("fp32", pixels).float(), dim=-1)
        candidate = nn.functional.normalize(forward("bf16", pixels).float(), dim=-1)
        min_cosine = float((reference * candidate).sum(dim=-1).min())
        best = {"fp32": math.inf, "bf16": math.inf}
        for r in range(rounds):
            for precision in ("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32"):
                start = time.perf_counter()
                forward(precision, pixels)
                best[precision] = min(best[precision], time.perf_counter() - start)
    return ProbeTimings(best["fp32"], best["bf16"], min_cosine)


def probe_pixels(image_size: int, count: int, seed: int = 0) -> torch.Tensor:
    """A fixed probe batch: smooth random images, normalised like real inputs (about zero mean, unit spread)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(count, 3, 8, 8, generator=generator)
    fine = 0.3 * torch.randn(count, 3, image_size, image_size, generator=generator)
    return nn.functional.interpolate(coarse, size=(image_size, image_size), mode="bilinear", align_corners=False) + fine


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _fingerprint(module: nn.Module) -> tuple:
    """Changes whenever a weight is replaced or updated in place (optimiser step, load_state_dict)."""
    marks = []
    for tensor in (*module.parameters(), *module.buffers()):
        try:
            version = tensor._version
        except RuntimeError:  # an inference tensor keeps no version counter
            version = tensor.data_ptr()
        marks.append((id(tensor), tensor.data_ptr(), version))
    return tuple(marks)


_BF16_COPIES: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, nn.Module]] = weakref.WeakKeyDictionary()
_BF16_LOCK = threading.Lock()


def bf16_copy(module: nn.Module) -> nn.Module:
    """A bf16 copy of `module` (eval mode, no gradients), made once and remade when its weights change.

    The fp32 module stays as it is (DAPT trains it; other code reads it), so this costs half the
    module's memory again, for the image tower only.
    """
    mark = _fingerprint(module)
    with _BF16_LOCK:  # encoding lanes (`models.stream`) ask at once: one copy, made once
        cached = _BF16_COPIES.get(module)
        if cached is not None and cached[0] == mark:
            return cached[1]
        with torch.inference_mode(False), torch.no_grad():
            clone = copy.deepcopy(module).to(torch.bfloat16).eval().requires_grad_(False)
        _BF16_COPIES[module] = (mark, clone)
        return clone


def decide(model: ClipModel, precision: str = "auto", *, flags: Iterable[str] | None = None) -> PrecisionChoice:
    """The precision `model`'s image tower runs in on a CPU: the one requested, or `auto`'s choice.

    `auto` probes only where it can pay: a CPU with bf16 units and an image tower of at least
    `PROBE_MIN_PARAMS` parameters (tiny test models stay fp32, instantly and deterministically).
    """
    if precision not in ("auto", "fp32", "bf16"):
        raise InputError(f"precision {precision!r} does not run on a CPU: use auto, fp32 or bf16")
    if precision == "bf16" and getattr(model.module, "visual", None) is None:
        raise InputError(f"model {model.spec.name!r} runs in fp32 only on a CPU (its backend has no image tower to cast)")
    if precision != "auto":
        return requested(precision)
    units = bf16_units(flags)
    visual = getattr(model.module, "visual", None)
    if units is None:
        return choose_precision(None, None)
    if visual is None:
        return PrecisionChoice("fp32", "fp32 backend", "this backend's network has no image tower to cast", units)
    if parameter_count(visual) < PROBE_MIN_PARAMS:
        return PrecisionChoice("fp32", "small model", f"image tower under {PROBE_MIN_PARAMS:,} parameters", units)
    from napari_clipmed.models.encode import image_features, tokens_per_image

    pixels = probe_pixels(model.spec.image_size, max(1, PROBE_TOKENS // tokens_per_image(visual)))
    choice = choose_precision(units, probe(lambda p, x: image_features(model, x, p), pixels))
    if choice.precision != "bf16":
        _BF16_COPIES.pop(visual, None)  # not used: free its memory
    return choice
