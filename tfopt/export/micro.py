"""A .tflite -> C/C++ byte array for TFLite Micro, checked first on the real TFLite Micro interpreter.

`export_micro` loads and runs the model in TFLite Micro's Python interpreter
(`pip install tflite-micro`) in a child process, lists every op it cannot run with
a suggested fix, measures the tensor arena, compares its outputs with LiteRT's,
and only then writes `<name>_model_data.cc` / `.h` and `<name>.tflite` (the same bytes).

On the way it makes the model smaller for a device, with no change to TFLite Micro:
weight tensors with few distinct values (clustered, or few values per channel)
are stored as look-up-table indices that TFLite Micro's DECODE operator expands
at run time (`tfopt.export.micro_compress` chooses the form), and tfopt plans
the tensor arena itself (`tfopt.export.micro_plan`: an operator order and an
offline plan in the flatbuffer's metadata). Every rewritten model runs on the
TFLite Micro interpreter and must give outputs bit-identical to the plain
model's before it is written; a plan that measures no smaller than TFLite
Micro's own is dropped.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import numpy as np

from tfopt._io import atomic_write
from tfopt.analyze.flatbuffer import inspect_tflite, tflite_bytes
from tfopt.errors import InvalidArgumentError
from tfopt.export.micro_c import (
    c_source,
    device_build_notes,
    resolver_method,
    write_c_array,
)
from tfopt.export.micro_check import _require_identical, check_on_micro

__all__ = [
    "MicroExportResult",
    "UnsupportedOp",
    "c_source",
    "compress_for_micro",
    "export_micro",
    "flash_bytes",
    "int4_kernel_support",
    "resolver_method",
    "write_c_array",
]

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
    plain_flash_bytes: int | None = None
    plain_arena_bytes: int | None = None
    compressed_tensors: tuple[dict[str, Any], ...] = ()
    plan: dict[str, Any] | None = None
    device_build: tuple[str, ...] = ()

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
        plain = (
            f" (plain int8: {self.plain_flash_bytes:,} bytes, {self.plain_flash_bytes / self.flash_bytes:.2f}x smaller)"
            if self.plain_flash_bytes and self.plain_flash_bytes != self.flash_bytes
            else ""
        )
        lines.append(f"  flash (model array): {self.flash_bytes:,} bytes{plain}")
        if self.compressed_tensors:
            lines.append(
                f"  compressed: {len(self.compressed_tensors)} weight tensor(s) as look-up-table indices "
                f"({', '.join(_describe(c) for c in self.compressed_tensors[:4])}"
                f"{', ...' if len(self.compressed_tensors) > 4 else ''}); outputs bit-identical on TFLite Micro"
            )
        if self.arena_bytes is not None:
            plain_arena = (
                f" (plain int8 with TFLite Micro's plan: {self.plain_arena_bytes:,} bytes)"
                if self.plain_arena_bytes and self.plain_arena_bytes != self.arena_bytes
                else ""
            )
            lines.append(f"  tensor arena needed: {self.arena_bytes:,} bytes{plain_arena}")
        if self.plan:
            p = self.plan
            verdict = "written" if p["used"] else "not written (" + p["reason"] + ")"
            lines.append(
                f"  tfopt's memory plan {verdict}: arena {p['arena_bytes']:,} bytes vs TFLite Micro's own plan "
                f"{p['tflm_arena_bytes']:,}; head {p['head_bytes']:,} bytes, lower bound of the chosen order "
                f"{p['lower_bound_bytes']:,} (flatbuffer order: {p['original_lower_bound_bytes']:,})"
            )
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
        lines.extend(f"  device build: {line}" for line in self.device_build)
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (`ops`, `unsupported_ops`, `arena_bytes`, `flash_bytes`, `max_abs_diff_vs_litert`, ...)."""
        out = dataclasses.asdict(self)
        out["ok"] = self.ok
        return out


def _describe(choice: dict[str, Any]) -> str:
    return f"{choice['name']} {choice['bits']}-bit {choice['mode']}"


def export_micro(
    tflite: Any,
    out_dir: str | os.PathLike,
    *,
    name: str = "model",
    data: Any = None,
    num_samples: int = 100,
    write_unsupported: bool = False,
    compress: bool = True,
    plan_memory: bool = True,
    timeout: float = 600.0,
) -> MicroExportResult:
    """Writes a .tflite as a C/C++ array for TFLite Micro, after running it in TFLite Micro.

    Use it before building firmware: an op TFLite Micro lacks, or an arena too big
    for the board's RAM, shows up here instead of on the device. The check runs in
    a child process (TFLite Micro can abort on a bad model). The files are
    `<name>_model_data.cc` (`alignas(16) const unsigned char <name>_tflite[]` and
    `const unsigned int <name>_tflite_len`), `<name>_model_data.h`, which also
    defines `<NAME>_TENSOR_ARENA_BYTES`, lists the ops to register and what the
    device build needs, and `<name>.tflite`, the same bytes as the array.

    With `compress=True`, weight tensors with few distinct values (a clustered
    layer after int8 conversion keeps at most `num_clusters` per channel) are
    stored as 1-7 bit look-up-table indices that TFLite Micro's DECODE operator
    expands at run time: flash shrinks, and the arena grows by the decoded
    tensors alive at once. Tensors that would not shrink stay as they are; a
    model with none is written as it came. With `plan_memory=True`, tfopt
    chooses an operator order and the arena offsets of every tensor and writes
    them into the flatbuffer (`OfflineMemoryAllocation` metadata, which stock
    TFLite Micro reads); it keeps them only when TFLite Micro measures a smaller
    arena than with its own plan. Every rewritten model runs on the TFLite Micro
    interpreter and must match the plain model's outputs bit for bit first.

    Args:
        tflite: flatbuffer bytes, a .tflite path, or a `ConversionResult`.
        out_dir: folder for the files (created if missing).
        name: C identifier the array is named after. Defaults to `"model"`.
        data: real inputs for the comparisons: an array, `(x, y)` (y is
            ignored) or a list of arrays in model-input order; float data is
            quantized with the input's scale. Defaults to `None` (random inputs).
        num_samples: inputs compared at most. Defaults to `100`.
        write_unsupported: write the files even when TFLite Micro cannot run the
            model (e.g. you register a custom kernel yourself). Defaults to `False`.
        compress: store weight tensors as look-up-table indices where that is
            smaller. Defaults to `True`.
        plan_memory: write tfopt's operator order and arena plan when TFLite
            Micro measures it smaller than its own. Defaults to `True`.
        timeout: seconds before the check is abandoned. Defaults to `600`.

    Returns:
        A `MicroExportResult`: `ops`, `unsupported_ops` (each with a fix),
        `arena_bytes`, `flash_bytes` (of the written model),
        `plain_flash_bytes` / `plain_arena_bytes` (the model as given),
        `compressed_tensors`, `plan`, `device_build`, `max_abs_diff_vs_litert`
        (plain model, in output quantization steps for integer outputs) and
        the files written.

    Raises:
        ValueError: not a TFLite flatbuffer, a bad `name`, or bad data.
        ImportError: `tflite-micro` is not installed.
        tfopt.BenchmarkError: TFLite Micro crashed on the model (the message says
            where), or a compressed or re-planned model's outputs differ from the
            plain model's (nothing is written).

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
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise InvalidArgumentError(f"num_samples must be an integer >= 1. Received: num_samples={num_samples!r}.")
    content = tflite_bytes(tflite)
    info = inspect_tflite(content)  # a malformed file fails here with a clear ValueError
    _require_tflite_micro()
    xs = _inputs(data, num_samples, len(info.inputs))
    notes: list[str] = []
    variants: dict[str, bytes] = {}
    choices: tuple[dict[str, Any], ...] = ()
    if compress:
        compressed, choices, why = compress_for_micro(content)
        if compressed is not None:
            variants["compressed"] = compressed
        elif why:
            notes.append(why)
    plan = None
    if plan_memory:
        from tfopt.export.micro_plan import plan_tflite

        planned = plan_tflite(variants.get("compressed", content))
        if planned is None:
            notes.append("no memory plan: tfopt plans single-subgraph models with static shapes only")
        else:
            variants["planned"], plan = planned
    raw = check_on_micro(content, xs, num_samples=num_samples, variants=variants, timeout=timeout)
    issues = _group(raw.get("issues", []), info)
    final, final_raw = content, raw
    plan_info = None
    if not issues and variants:
        checked = {v["name"]: v for v in raw.get("variants", [])}
        for key in variants:
            _require_identical(checked.get(key), key, raw.get("num_samples", 0))
        if "compressed" in variants:
            final, final_raw = variants["compressed"], checked["compressed"]
        if plan is not None:
            mine, stock = checked["planned"], final_raw
            used = mine["arena_bytes"] < stock["arena_bytes"]
            plan_info = {
                "used": used,
                "reason": "" if used else "TFLite Micro's own plan measured no larger",
                "arena_bytes": mine["arena_bytes"],
                "head_bytes_measured": mine.get("arena_head_bytes"),
                "tflm_arena_bytes": stock["arena_bytes"],
                "tflm_head_bytes": stock.get("arena_head_bytes"),
                "compared_samples": mine.get("num_samples", 0),
                "mismatched_samples": mine.get("mismatched_samples", 0),
                **plan.to_dict(),
                "order_changed": plan.order != sorted(plan.order),
            }
            if used:
                final, final_raw = variants["planned"], mine
            else:
                notes.append(
                    f"kept TFLite Micro's own memory plan: tfopt's measured {mine['arena_bytes']:,} bytes, "
                    f"TFLite Micro's {stock['arena_bytes']:,}"
                )
    elif issues:
        choices = ()
    ops = _ops_of(final) if final is not content else list(raw["ops"])
    device = device_build_notes(ops, compressed=bool(choices) and final is not content,
                                planned=bool(plan_info and plan_info["used"]))
    quantized = all(o["dtype"] in ("int8", "uint8", "int16") for o in raw.get("outputs", [])) and raw.get("outputs")
    ref, xnn = raw.get("max_abs_diff_reference"), raw.get("max_abs_diff_xnnpack")
    files: tuple[str, ...] = ()
    if not issues or write_unsupported:
        files = write_c_array(
            final, out_dir, name=name, arena_bytes=final_raw.get("arena_bytes"), ops=ops, device_build=device
        )
        files += (atomic_write(os.path.join(os.fspath(out_dir), f"{name}.tflite"), final),)
    if issues and not files:
        notes.append("nothing written: fix the unsupported ops, or pass write_unsupported=True")
    return MicroExportResult(
        name=name,
        ops=tuple(ops),
        unsupported_ops=issues,
        arena_bytes=final_raw.get("arena_bytes"),
        flash_bytes=len(final),
        max_abs_diff_vs_litert=max(ref) if ref else None,
        diff_unit="quantization steps" if quantized else "absolute",
        max_abs_diff_vs_litert_xnnpack=max(xnn) if xnn else None,
        num_samples=int(raw.get("num_samples", 0)),
        files=files,
        notes=tuple(raw.get("notes", ())) + tuple(notes),
        plain_flash_bytes=len(content),
        plain_arena_bytes=raw.get("arena_bytes"),
        compressed_tensors=choices if "compressed" in variants and not issues else (),
        plan=plan_info,
        device_build=device,
    )


def flash_bytes(tflite: Any) -> int:
    """The flash a device holds for a model: the size of its TFLite Micro compressed flatbuffer, in bytes.

    Weight tensors are stored as look-up-table indices where that is smaller
    (the same choice `export_micro` makes); the size is the plain model's when
    nothing compresses. This runs no interpreter: `export_micro` checks the
    compressed model's outputs before writing it.

    Example:

    >>> import keras, numpy as np, tfopt
    >>> from tfopt.export.micro import flash_bytes
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    >>> tflite = tfopt.convert(model, mode="int8", calibration=np.random.rand(20, 8).astype("float32"))
    >>> flash_bytes(tflite) <= len(tflite.tflite)
    True
    """
    content = tflite_bytes(tflite)
    compressed, _, _ = compress_for_micro(content)
    return len(compressed) if compressed is not None else len(content)


def compress_for_micro(tflite: Any) -> tuple[bytes | None, tuple[dict[str, Any], ...], str]:
    """The model with its weight tensors as TFLite Micro look-up-table indices where smaller.

    Returns `(compressed bytes or None, the choices, why nothing was compressed)`.
    Uses TFLite Micro's own writer (`tflite_micro.tensorflow.lite.micro.compression`);
    no interpreter runs here.
    """
    from tfopt.analyze.flatbuffer_micro import weight_tensors_for_micro
    from tfopt.export.micro_compress import choose_compression

    content = tflite_bytes(tflite)
    choices = []
    for tensor in weight_tensors_for_micro(content):
        choice = choose_compression(tensor["values"], channel_axis=tensor["quantized_dimension"])
        if choice is not None:
            choices.append({"tensor": tensor["index"], "name": tensor["name"], **dataclasses.asdict(choice)})
    if not choices:
        return None, (), "no weight tensor compresses (each has too many distinct values per channel)"
    _require_tflite_micro()
    import warnings

    from tflite_micro.tensorflow.lite.micro.compression import spec
    from tflite_micro.tensorflow.lite.micro.compression.compress import compress
    from tflite_micro.tensorflow.lite.micro.compression.compressor import (
        CompressionError,
    )

    while choices:
        specs = [
            spec.Tensor(
                subgraph=0,
                tensor=c["tensor"],
                compression=[
                    spec.LookUpTableCompression(
                        index_bitwidth=c["bits"],
                        mode=spec.PerTensor() if c["axis"] is None else spec.PerChannel(axis=c["axis"]),
                    )
                ],
            )
            for c in choices
        ]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = bytes(compress(content, specs))
        except CompressionError as err:
            refused = [c for c in choices if repr(c["name"]) in str(err) or f"tensor {c['tensor']})" in str(err)]
            if not refused:
                return None, (), f"TFLite Micro's writer refused the compression: {err}"
            choices = [c for c in choices if c not in refused]
            continue
        if len(out) >= len(content):
            return None, (), f"compression would not shrink the model ({len(content):,} -> {len(out):,} bytes)"
        return out, tuple(choices), ""
    return None, (), "TFLite Micro's writer refused every tensor"


def _ops_of(content: bytes) -> list[str]:
    return list(dict.fromkeys(op.name for op in inspect_tflite(content).ops if op.subgraph == 0))


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


def int4_kernel_support(tflite: Any, *, data: Any = None, num_samples: int = 20, timeout: float = 600.0) -> list[dict]:
    """Which of a model's ops TFLite Micro runs with 4-bit (INT4) weights, found by running them.

    For each conv / fully-connected weight tensor, the weights are re-quantized
    to [-7, 7] (`micro_compress.requantize_int4`) and the model is written twice:
    with those values stored as int8, and packed as INT4. TFLite Micro must run
    both and give bit-identical outputs for the op to count as accepting int4.
    One row per tensor: `op`, `tensor`, `accepted`, `reason`, `int8_bytes`, `int4_bytes`.
    """
    from tfopt.analyze.flatbuffer import inspect_tflite as _inspect
    from tfopt.analyze.flatbuffer import read_model
    from tfopt.analyze.flatbuffer_micro import rewrite_weights, weight_tensors_for_micro
    from tfopt.export.micro_compress import requantize_int4

    content = tflite_bytes(tflite)
    model = read_model(content)
    subgraph = model.subgraphs[0]
    users = {}
    for op in _inspect(content).ops:
        if op.subgraph == 0:
            for t in subgraph.operators[op.index].inputs[1:2]:
                users.setdefault(t, op.name)
    xs = _inputs(data, num_samples, len(_inspect(content).inputs))
    rows = []
    for tensor in weight_tensors_for_micro(content):
        if tensor["index"] not in users or tensor["values"].dtype != np.int8:
            continue
        q = subgraph.tensors[tensor["index"]].quantization
        q4, scales = requantize_int4(tensor["values"], q.scale, axis=tensor["quantized_dimension"])
        change = {tensor["index"]: q4}
        as_int8 = rewrite_weights(content, change, scales={tensor["index"]: scales})
        as_int4 = rewrite_weights(content, change, scales={tensor["index"]: scales}, int4=True)
        raw = check_on_micro(as_int8, xs, num_samples=num_samples, variants={"int4": as_int4}, timeout=timeout)
        found = (raw.get("variants") or [{}])[0]
        reason = "; ".join(i["reason"] for i in found.get("issues", []))
        if not reason and found.get("mismatched_samples"):
            reason = f"outputs differ from the same weights stored as int8 on {found['mismatched_samples']} inputs"
        rows.append({
            "op": users[tensor["index"]],
            "tensor": tensor["name"],
            "accepted": bool(found) and not reason and not raw.get("issues"),
            "reason": reason,
            "int8_bytes": len(as_int8),
            "int4_bytes": len(as_int4),
        })
    return rows
