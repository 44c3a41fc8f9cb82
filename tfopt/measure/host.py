"""The machine a measurement ran on: CPU model and the instructions that decide int8 and sparse speed.

Latency ratios move between CPUs: int8 kernels gain most where the CPU has
int8 dot-product instructions (x86 VNNI or AMX, Arm dot-product / i8mm) and
little where it has only AVX2; XNNPACK's sparse kernels never run on x86 with
AVX. A latency without the machine next to it cannot be read, so reports
carry `describe_host()`.
"""

from __future__ import annotations

import functools
import os

CPUINFO = "/proc/cpuinfo"
# Flags that give int8 kernels a dot product, by name in /proc/cpuinfo (x86 and Arm spellings).
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")
_X86_VECTOR = ("avx512f", "avx2", "avx")


def host_cpu_flags(path: str = CPUINFO) -> list[str] | None:
    """The CPU feature flags of this machine from /proc/cpuinfo (None where it cannot be read).

    >>> flags = host_cpu_flags()
    >>> flags is None or all(isinstance(f, str) for f in flags)
    True
    """
    return _cpuinfo(path)[1]


def describe_host(path: str = CPUINFO) -> str:
    """One line naming the CPU, its logical cores and its widest vector / int8 dot-product instructions.

    Read from /proc/cpuinfo; parts it cannot read are left out rather than guessed.

    >>> isinstance(describe_host(), str)
    True
    """
    model, flags = _cpuinfo(path)
    parts = [model or "unknown CPU", f"{os.cpu_count() or '?'} logical CPUs"]
    if flags is not None:
        vector = next((f for f in _X86_VECTOR if f in flags), None)
        if vector:
            parts.append(vector.upper().replace("512F", "-512"))
        dot = [f for f in INT8_DOT_FLAGS if f in flags]
        parts.append(f"int8 dot product: {', '.join(dot)}" if dot else "no int8 dot-product instructions")
    return "; ".join(parts)


@functools.lru_cache(maxsize=1)
def this_host() -> str:
    """`describe_host()` of this machine, read once per process."""
    return describe_host()


def _cpuinfo(path: str) -> tuple[str | None, list[str] | None]:
    model, flags = None, None
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model name", "Hardware") and model is None and value.strip():
                    model = value.strip()
                elif key in ("flags", "Features") and flags is None:
                    flags = sorted(set(value.split()))
                if model is not None and flags is not None:
                    break
    except OSError:
        pass
    return model, flags
