"""The C/C++ side of a TFLite Micro export: the model as an aligned byte array, and the header a firmware includes.

`write_c_array` writes `<name>_model_data.cc` / `.h`; `c_source` returns their text;
`resolver_method` names the `MicroMutableOpResolver` call that registers an op.
`tfopt.export.micro.export_micro` checks the model on TFLite Micro first and then calls these.
"""

from __future__ import annotations

import os
from typing import Any

from tfopt._io import atomic_write
from tfopt.analyze.flatbuffer import inspect_tflite, tflite_bytes


def resolver_method(op: str) -> str:
    """The `MicroMutableOpResolver` method that registers an op, e.g. CONV_2D -> AddConv2D."""
    if op == "CUSTOM:TFLM_DECODE":
        return "AddDecode()"
    if op.startswith("CUSTOM:"):
        return f'AddCustom("{op[7:]}", /* your registration */)'
    special = {"PADV2": "AddPadV2", "BATCH_MATMUL": "AddBatchMatMul"}
    words = (
        part if part[:1].isdigit() else part[:1] + part[1:].lower()
        for part in op.split("_")
    )
    return special.get(op, "Add" + "".join(words)) + "()"


def c_source(
    content: bytes, *, name: str, arena_bytes: int | None, ops: list[str], device_build: tuple[str, ...] = ()
) -> tuple[str, str]:
    """The (.cc, .h) text holding the model as an aligned byte array named `<name>_tflite`."""
    guard = f"TFOPT_{name.upper()}_MODEL_DATA_H_"
    arena = _arena_budget(arena_bytes)
    methods = "\n".join(f"//   resolver.{resolver_method(op)};" for op in ops)
    header = (
        f"// {name}: a TFLite model as a C array, written by tfopt.export_micro. Do not edit.\n"
        f"#ifndef {guard}\n#define {guard}\n\n"
        f"// Model flatbuffer: {len(content)} bytes of flash.\n"
        f"extern const unsigned char {name}_tflite[];\n"
        f"extern const unsigned int {name}_tflite_len;\n\n"
        + (
            f"// Tensor arena measured on the TFLite Micro interpreter (reference kernels): {arena_bytes} bytes;\n"
            f"// this budget adds 10% and rounds up to 1 KB for optimized kernels' scratch buffers.\n"
            f"#define {name.upper()}_TENSOR_ARENA_BYTES {arena}\n\n"
            if arena
            else ""
        )
        + f"// Ops to register, e.g. tflite::MicroMutableOpResolver<{len(ops)}> resolver;\n{methods}\n\n"
        + "".join(f"// Device build: {line}\n" for line in device_build[1:])
        + ("\n" if device_build[1:] else "")
        + f"#endif  // {guard}\n"
    )
    rows = [
        ", ".join(f"0x{b:02x}" for b in content[i : i + 12])
        for i in range(0, len(content), 12)
    ]
    source = (
        f"// {name}: a TFLite model as a C array, written by tfopt.export_micro. Do not edit.\n"
        f'#include "{name}_model_data.h"\n\n'
        f"alignas(16) const unsigned char {name}_tflite[] = {{\n    "
        + ",\n    ".join(rows)
        + "\n};\n"
        f"const unsigned int {name}_tflite_len = {len(content)};\n"
    )
    return source, header


def _arena_budget(arena_bytes: int | None) -> int | None:
    if not arena_bytes:
        return None
    return int(-(-int(arena_bytes * 1.1) // 1024) * 1024)


def write_c_array(
    tflite: Any,
    out_dir: str | os.PathLike,
    *,
    name: str = "model",
    arena_bytes: int | None = None,
    ops: list[str] | None = None,
    device_build: tuple[str, ...] = (),
) -> tuple[str, str]:
    """Writes `<name>_model_data.cc` and `.h` atomically (no TFLite Micro check); returns their paths.

    Use `export_micro` to check the model on TFLite Micro first; this only writes the arrays.

    Example:

    >>> import keras, os, tempfile, tfopt
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> source, header = tfopt.write_c_array(tfopt.convert(model), tempfile.mkdtemp(), name="tiny")
    >>> os.path.basename(source), os.path.basename(header)
    ('tiny_model_data.cc', 'tiny_model_data.h')
    """
    content = tflite_bytes(tflite)
    if ops is None:
        ops = list(
            dict.fromkeys(
                op.name for op in inspect_tflite(content).ops if op.subgraph == 0
            )
        )
    source, header = c_source(content, name=name, arena_bytes=arena_bytes, ops=ops, device_build=device_build)
    out_dir = os.fspath(out_dir)
    h_path = atomic_write(
        os.path.join(out_dir, f"{name}_model_data.h"), header.encode()
    )
    cc_path = atomic_write(
        os.path.join(out_dir, f"{name}_model_data.cc"), source.encode()
    )
    return cc_path, h_path


def device_build_notes(ops: list[str], *, compressed: bool, planned: bool) -> tuple[str, ...]:
    """What a TFLite Micro firmware build needs for this model (build options and op resolver entries)."""
    calls = ", ".join(resolver_method(op) for op in ops)
    notes = [f"MicroMutableOpResolver<{len(ops)}> with {calls}"]
    if compressed:
        notes.append(
            "compressed weights: TFLite Micro sources with the DECODE operator (kernels/decode.cc, "
            "decode_state_lut.cc; tflite-micro 2026 or later) and resolver.AddDecode() (custom op TFLM_DECODE); "
            "no build flag is needed (USE_TFLM_COMPRESSION enables the older COMPRESSION_METADATA format, "
            "which tfopt does not write); the arena holds the decoded tensors"
        )
    if planned:
        notes.append(
            "tfopt's memory plan is in the model (OfflineMemoryAllocation metadata): use the default "
            "MicroAllocator / GreedyMemoryPlanner, which reads it; keep the operator order of this file"
        )
    return tuple(notes)
