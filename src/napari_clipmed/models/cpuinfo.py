"""What the CPU is and which matrix units it has, from `/proc/cpuinfo`; torch-free, so benchmarks and
tools can print it without loading torch (`models.precision` decides bf16 from `bf16_units`)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8", "avx_vnni")


def _field(keys: tuple[str, ...], cpuinfo: str | None) -> str | None:
    """The value of the first `/proc/cpuinfo` line named one of `keys` (this machine's file when `cpuinfo` is
    None); None when there is no such line or no file (off Linux)."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text(errors="replace")
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keys:
            return value.strip()
    return None


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags from `/proc/cpuinfo` text (this machine's when None; empty off Linux)."""
    return frozenset((_field(("flags", "Features"), cpuinfo) or "").split())


def cpu_name(cpuinfo: str | None = None) -> str:
    """The CPU's model name from `/proc/cpuinfo` (platform.processor() where there is no such file)."""
    if cpuinfo is None and not CPUINFO.is_file():
        import platform

        return platform.processor() or platform.machine()
    return _field(("model name",), cpuinfo) or "unknown CPU"


def bf16_units(flags: Iterable[str] | None = None) -> str | None:
    """'AMX', 'AVX-512 BF16', or None when the CPU has no bf16 matrix units."""
    flags = cpu_flags() if flags is None else frozenset(flags)
    if "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX-512 BF16"
    return None


def isa_summary(flags: Iterable[str] | None = None) -> str:
    """The flags that matter for GEMM speed, present ones only (for benchmark output)."""
    flags = cpu_flags() if flags is None else frozenset(flags)
    return " ".join(f for f in ISA_FLAGS if f in flags) or "none of " + " ".join(ISA_FLAGS)
