"""A .tflite -> C/C++ byte array for TFLite Micro, checked first on the real TFLite Micro interpreter.

`export_micro` loads and runs the model in TFLite Micro's Python interpreter
(`pip install tflite-micro`) in a child process, lists every op it cannot run with
a suggested fix, measures the tensor arena, compares its outputs with LiteRT's,
and only then writes `<name>_model_data.cc` / `.h`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from typing import Any

import numpy as np

from tfopt._io import atomic_write
from tfopt.measure._isolate import run_child
from tfopt.analyze.flatbuffer import inspect_tflite, tflite_bytes
from tfopt.errors import InvalidArgumentError

_HYBRID = "convert to full integer: tfopt.convert(model, mode='int8', calibration=..., input_type='int8', output_type='int8')"
_FIXES = {
    "TOPK_V2": "return the scores and take the top-k on the host, or use tf.argmax (ARG_MAX) for top-1",
    "REDUCE_PROD": "replace the product with exp(sum(log(x))) for positive x, or a chain of MUL",
    "SIGN": "replace tf.sign(x) with tanh(k*x) or a comparison + cast, or drop it",
    "ATAN2": "compute the angle on the host, or approximate it with supported elementwise ops",
    "NON_MAX_SUPPRESSION_V4": "run box decoding and non-max suppression on the host",
    "NON_MAX_SUPPRESSION_V5": "run box decoding and non-max suppression on the host",
    "RANDOM_UNIFORM": "remove training-only randomness (Dropout / noise layers must be inactive at export)",
    "RANDOM_STANDARD_NORMAL": "remove training-only randomness (noise layers must be inactive at export)",
}


@dataclasses.dataclass(frozen=True)
class UnsupportedOp:
    """An op TFLite Micro could not run: where, why, and what to do."""

    op: str | None
    nodes: tuple[int, ...]
    reason: str
    fix: str


@dataclasses.dataclass(frozen=True)
class MicroExportResult:
    """What `export_micro` found and wrote."""

    name: str
    ops: tuple[str, ...]
    unsupported_ops: tuple[UnsupportedOp, ...]
    arena_bytes: int | None
    flash_bytes: int
    max_abs_diff_vs_litert: float | None
    diff_unit: str
    max_abs_diff_vs_litert_xnnpack: float | None = None
    num_samples: int = 0
    files: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when TFLite Micro ran the model with no unsupported op."""
        return not self.unsupported_ops

    def summary(self) -> str:
        """A readable report."""
        lines = [
            f"TFLite Micro export of {self.name!r}: {'OK' if self.ok else 'NOT runnable as is'}"
        ]
        lines.append(f"  ops: {', '.join(self.ops)}")
        lines.append(f"  flash (model array): {self.flash_bytes:,} bytes")
        if self.arena_bytes is not None:
            lines.append(f"  tensor arena needed: {self.arena_bytes:,} bytes")
        if self.max_abs_diff_vs_litert is not None:
            lines.append(
                f"  max |TFLite Micro - LiteRT| over {self.num_samples} input(s): "
                f"{self.max_abs_diff_vs_litert:g} {self.diff_unit} (reference kernels), "
                f"{self.max_abs_diff_vs_litert_xnnpack:g} (XNNPACK)"
            )
        for issue in self.unsupported_ops:
            nodes = (
                f" (node{'s' if len(issue.nodes) > 1 else ''} {', '.join(map(str, issue.nodes))})"
                if issue.nodes
                else ""
            )
            lines.append(f"  unsupported: {issue.op or 'model'}{nodes}: {issue.reason}")
            lines.append(f"    fix: {issue.fix}")
        lines.extend(f"  wrote {path}" for path in self.files)
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (`ops`, `unsupported_ops`, `arena_bytes`, `flash_bytes`, `max_abs_diff_vs_litert`, ...)."""
        out = dataclasses.asdict(self)
        out["ok"] = self.ok
        return out


def export_micro(
    tflite: Any,
    out_dir: str | os.PathLike,
    *,
    name: str = "model",
    data: Any = None,
    num_samples: int = 100,
    write_unsupported: bool = False,
    timeout: float = 600.0,
) -> MicroExportResult:
    """Writes a .tflite as a C/C++ array for TFLite Micro, after running it in TFLite Micro.

    Use it before building firmware: an op TFLite Micro lacks, or an arena too big
    for the board's RAM, shows up here instead of on the device. The check runs in
    a child process (TFLite Micro can abort on a bad model). The files are
    `<name>_model_data.cc` (`alignas(16) const unsigned char <name>_tflite[]` and
    `const unsigned int <name>_tflite_len`) and `<name>_model_data.h`, which also
    defines `<NAME>_TENSOR_ARENA_BYTES` and lists the ops to register.

    Args:
        tflite: flatbuffer bytes, a .tflite path, or a `ConversionResult`.
        out_dir: folder for the two files (created if missing).
        name: C identifier the array is named after. Defaults to `"model"`.
        data: real inputs for the comparison with LiteRT: an array, `(x, y)` (y is
            ignored) or a list of arrays in model-input order; float data is
            quantized with the input's scale. Defaults to `None` (random inputs).
        num_samples: inputs compared at most. Defaults to `100`.
        write_unsupported: write the files even when TFLite Micro cannot run the
            model (e.g. you register a custom kernel yourself). Defaults to `False`.
        timeout: seconds before the check is abandoned. Defaults to `600`.

    Returns:
        A `MicroExportResult`: `ops`, `unsupported_ops` (each with a fix),
        `arena_bytes`, `flash_bytes`, `max_abs_diff_vs_litert` (in output
        quantization steps for integer outputs) and the files written.

    Raises:
        ValueError: not a TFLite flatbuffer, a bad `name`, or bad data.
        ImportError: `tflite-micro` is not installed.
        tfopt.BenchmarkError: TFLite Micro crashed on the model (the message says where).

    Example:

    >>> import keras, numpy as np, tempfile, tfopt
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    >>> x = np.random.rand(20, 8).astype("float32")
    >>> tflite = tfopt.convert(model, mode="int8", calibration=x, input_type="int8", output_type="int8")
    >>> result = tfopt.export_micro(tflite, tempfile.mkdtemp(), name="dense", data=x)
    >>> result.ok, result.max_abs_diff_vs_litert <= 1
    (True, True)
    """
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise InvalidArgumentError(
            f"name must be a C identifier (letters, digits, _; not starting with a digit). Received: name={name!r}."
        )
    if (
        isinstance(num_samples, bool)
        or not isinstance(num_samples, int)
        or num_samples < 1
    ):
        raise InvalidArgumentError(
            f"num_samples must be an integer >= 1. Received: num_samples={num_samples!r}."
        )
    content = tflite_bytes(tflite)
    info = inspect_tflite(
        content
    )  # a malformed file fails here with a clear ValueError
    _require_tflite_micro()
    xs = _inputs(data, num_samples, len(info.inputs))
    with tempfile.TemporaryDirectory(prefix="tfopt-micro-") as tmp:
        request = {
            "task": "micro",
            "tflite_path": os.path.join(tmp, "model.tflite"),
            "result_path": os.path.join(tmp, "result.json"),
            "num_samples": num_samples,
            "seed": 0,
        }
        with open(request["tflite_path"], "wb") as handle:
            handle.write(content)
        if xs is not None:
            request["data_path"] = os.path.join(tmp, "data.npz")
            np.savez(request["data_path"], **{f"x{i}": x for i, x in enumerate(xs)})
        raw, _ = run_child(
            "tfopt.measure._micro_runner",
            request,
            tmp,
            timeout=timeout,
            runtime="the TFLite Micro interpreter",
        )
    issues = _group(raw.get("issues", []), info)
    quantized = all(
        o["dtype"] in ("int8", "uint8", "int16") for o in raw.get("outputs", [])
    ) and raw.get("outputs")
    ref, xnn = raw.get("max_abs_diff_reference"), raw.get("max_abs_diff_xnnpack")
    files: tuple[str, ...] = ()
    if not issues or write_unsupported:
        files = write_c_array(
            content,
            out_dir,
            name=name,
            arena_bytes=raw.get("arena_bytes"),
            ops=raw["ops"],
        )
    return MicroExportResult(
        name=name,
        ops=tuple(raw["ops"]),
        unsupported_ops=issues,
        arena_bytes=raw.get("arena_bytes"),
        flash_bytes=len(content),
        max_abs_diff_vs_litert=max(ref) if ref else None,
        diff_unit="quantization steps" if quantized else "absolute",
        max_abs_diff_vs_litert_xnnpack=max(xnn) if xnn else None,
        num_samples=int(raw.get("num_samples", 0)),
        files=files,
        notes=tuple(raw.get("notes", ()))
        + (
            (
                "nothing written: fix the unsupported ops, or pass write_unsupported=True",
            )
            if issues and not files
            else ()
        ),
    )


def _require_tflite_micro() -> None:
    import importlib.util

    if importlib.util.find_spec("tflite_micro") is None:
        raise ImportError(
            "export_micro needs the TFLite Micro interpreter: `pip install tflite-micro`."
        )


def _inputs(data: Any, num_samples: int, num_inputs: int) -> list[np.ndarray] | None:
    if data is None:
        return None
    if (
        isinstance(data, tuple)
        and len(data) == 2
        and num_inputs == 1
        and not isinstance(data[0], (list, tuple))
    ):
        data = data[0]  # (x, y): the labels are not needed
    elif (
        isinstance(data, tuple)
        and len(data) == 2
        and isinstance(data[0], (list, tuple))
    ):
        data = data[0]
    xs = (
        [np.asarray(a) for a in data]
        if isinstance(data, (list, tuple))
        else [np.asarray(data)]
    )
    if len(xs) != num_inputs:
        raise InvalidArgumentError(
            f"the model has {num_inputs} input(s) but data holds {len(xs)} array(s); pass one array per input."
        )
    if any(a.dtype.kind not in "biuf" for a in xs) or any(
        a.ndim == 0 or len(a) == 0 for a in xs
    ):
        raise InvalidArgumentError(
            f"data must be non-empty numeric arrays with examples on axis 0; got {[(a.dtype.name, a.shape) for a in xs]}."
        )
    return [a[:num_samples] for a in xs]


def _fix(op: str | None, reason: str, info) -> str:
    if "filter type: INT8" in reason or "Hybrid" in reason:
        return "TFLite Micro has no hybrid (dynamic-range) kernels; " + _HYBRID
    if op == "DEQUANTIZE" and "kTfLiteInt8" in reason:
        return (
            "TFLite Micro cannot dequantize float16 weights; "
            + _HYBRID
            + " (or keep float32)"
        )
    if op and op.startswith("CUSTOM:Flex"):
        return "a TensorFlow (Flex) op: convert with builtin ops only (tfopt.convert does) and replace the layer behind it"
    if op and op.startswith("CUSTOM:"):
        return "register its kernel in your MicroMutableOpResolver (AddCustom), or replace the op with builtin ones"
    if op in _FIXES:
        return _FIXES[op]
    if op is None:
        return "TFLite Micro needs static shapes and builtin ops; re-convert with a fixed input shape"
    float_model = any(t.dtype == "FLOAT32" for t in info.inputs)
    extra = f"; or {_HYBRID} (int8 kernels cover more ops)" if float_model else ""
    return f"replace the layer that produces {op} with ops TFLite Micro supports{extra}"


def _group(issues: list[dict[str, Any]], info) -> tuple[UnsupportedOp, ...]:
    grouped: dict[tuple, list[int]] = {}
    for issue in issues:
        grouped.setdefault((issue["op"], issue["reason"]), []).extend(issue["nodes"])
    return tuple(
        UnsupportedOp(op, tuple(sorted(nodes)), reason, _fix(op, reason, info))
        for (op, reason), nodes in grouped.items()
    )


def resolver_method(op: str) -> str:
    """The `MicroMutableOpResolver` method that registers an op, e.g. CONV_2D -> AddConv2D."""
    if op.startswith("CUSTOM:"):
        return f'AddCustom("{op[7:]}", /* your registration */)'
    special = {"PADV2": "AddPadV2", "BATCH_MATMUL": "AddBatchMatMul"}
    words = (
        part if part[:1].isdigit() else part[:1] + part[1:].lower()
        for part in op.split("_")
    )
    return special.get(op, "Add" + "".join(words)) + "()"


def c_source(
    content: bytes, *, name: str, arena_bytes: int | None, ops: list[str]
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
        f"#endif  // {guard}\n"
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
    source, header = c_source(content, name=name, arena_bytes=arena_bytes, ops=ops)
    out_dir = os.fspath(out_dir)
    h_path = atomic_write(
        os.path.join(out_dir, f"{name}_model_data.h"), header.encode()
    )
    cc_path = atomic_write(
        os.path.join(out_dir, f"{name}_model_data.cc"), source.encode()
    )
    return cc_path, h_path
