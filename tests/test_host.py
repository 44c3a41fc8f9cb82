"""tfopt.measure.host: the CPU line reports carry next to their latencies, read from /proc/cpuinfo."""

from __future__ import annotations

import os

from tfopt.measure.host import describe_host, host_cpu_flags

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


def test_this_machine():
    line = describe_host()
    assert "logical CPUs" in line
    flags = host_cpu_flags()
    if flags is not None and "avx2" in flags and not any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8")):
        assert line.endswith("no int8 dot-product instructions")
