"""tfopt.measure.host: the CPU line reports carry next to their latencies, read from /proc/cpuinfo."""

from __future__ import annotations

import os

import pytest

from tfopt.measure.host import describe_host, host_cpu_flags, this_host

AMD_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx fma avx2
"""
INTEL_VNNI = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_vnni
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_vnni
"""
ARM_DOTPROD = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
"""


def _host(tmp_path, text: str) -> str:
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return describe_host(str(path))


def test_x86_without_vnni_says_so(tmp_path):
    cpus = os.cpu_count()
    assert _host(tmp_path, AMD_AVX2) == f"AMD EPYC; {cpus} logical CPUs; AVX2; no int8 dot-product instructions"


def test_x86_with_vnni_names_it_once(tmp_path):
    line = _host(tmp_path, INTEL_VNNI)
    assert line.startswith("Intel(R) Xeon(R) Platinum 8375C")
    assert line.endswith("; AVX-512; int8 dot product: avx512_vnni")


def test_arm_features_line(tmp_path):
    line = _host(tmp_path, ARM_DOTPROD)
    assert line.startswith("unknown CPU;")  # this cpuinfo names no model: nothing is guessed
    assert line.endswith("int8 dot product: asimddp")
    assert host_cpu_flags(str(tmp_path / "cpuinfo"))[:2] == ["aes", "asimd"]


def test_unreadable_cpuinfo_leaves_the_flags_out(tmp_path):
    missing = str(tmp_path / "nothing")
    assert host_cpu_flags(missing) is None
    assert describe_host(missing) == f"unknown CPU; {os.cpu_count()} logical CPUs"


def _read_cpuinfo_by_hand() -> tuple[str | None, set[str]] | None:
    """The first model line and the first flags line of this machine, read independently of tfopt."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    fields = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines)]
    model = next((v for k, v in fields if k in ("model name", "Model name", "Hardware") and v), None)
    flags = next((v.split() for k, v in fields if k in ("flags", "Features")), None)
    return model, set(flags) if flags is not None else None


def test_this_machine_line_matches_its_cpuinfo():
    read = _read_cpuinfo_by_hand()
    if read is None:
        pytest.skip("no /proc/cpuinfo on this machine")
    model, flags = read
    line = describe_host()
    parts = line.split("; ")
    assert parts[0] == (model or "unknown CPU")
    assert parts[1] == f"{os.cpu_count()} logical CPUs"
    if flags is None:
        assert len(parts) == 2
        return
    expected_vector = next((f for f in ("avx512f", "avx2", "avx") if f in flags), None)
    if expected_vector is None:
        assert len(parts) == 3  # no x86 vector name
    else:
        assert parts[2] == {"avx512f": "AVX-512", "avx2": "AVX2", "avx": "AVX"}[expected_vector]
    dot = [f for f in ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm") if f in flags]
    assert parts[-1] == (f"int8 dot product: {', '.join(dot)}" if dot else "no int8 dot-product instructions")
    assert sorted(flags) == host_cpu_flags()
    assert this_host() == line
