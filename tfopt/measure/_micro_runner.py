"""Child-process side of the TFLite Micro check and the GPU-delegate analyzer.

Run as `python -m tfopt.measure._micro_runner REQUEST.json`. It imports only numpy,
tflite_micro and ai_edge_litert (never TensorFlow). TFLite Micro can abort the
process on some models, and it reports problems by printing from C++, so this
runs in a child (`tfopt.export.micro` is the parent) and reads those prints by
pointing file descriptors 1 and 2 at a temporary file while it works.

Tasks:
- `micro`: find every op TFLite Micro cannot run (drop the failing op, make its
  outputs graph inputs, retry), measure the arena, then compare TFLite Micro's
  outputs with LiteRT's on the given inputs.
- `analyze`: LiteRT's model analyzer text with its GPU-delegate verdict.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
from typing import Any

import numpy as np

from tfopt.measure._runner import (
    _input_order,
    _random_input,
    make_interpreter,
    quantize,
    resize_inputs,
    stage,
)

_ARENA_CAP = 1 << 30
# Custom ops that TFLite Micro's Python interpreter registers; others are tried first.
_MICRO_CUSTOM = ("TFLite_Detection_PostProcess",)


@contextlib.contextmanager
def captured_output():
    """Points fds 1 and 2 at a temporary file (C++ prints included); yields a list that gets the text."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    box: list[str] = []
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 1)
        os.dup2(tmp.fileno(), 2)
        try:
            yield box
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            tmp.seek(0)
            box.append(tmp.read().decode("utf-8", "replace"))


def _op_name(model, op, fu) -> str:
    name = fu.opcode_to_name(model, op.opcodeIndex) or "UNKNOWN"
    if name == "CUSTOM":
        code = model.operatorCodes[op.opcodeIndex].customCode
        name = "CUSTOM:" + (
            code.decode() if isinstance(code, bytes) else str(code or "")
        )
    return name


def _drop_nodes(subgraph, positions: set[int], original: list[int]) -> None:
    """Removes nodes; their outputs become graph inputs so the rest still plans."""
    inputs = [int(i) for i in (subgraph.inputs if subgraph.inputs is not None else [])]
    for pos in sorted(positions):
        for tensor in (
            subgraph.operators[pos].outputs
            if subgraph.operators[pos].outputs is not None
            else []
        ):
            if int(tensor) >= 0 and int(tensor) not in inputs:
                inputs.append(int(tensor))
    subgraph.inputs = np.asarray(inputs, dtype=np.int32)
    keep = [k for k in range(len(subgraph.operators)) if k not in positions]
    subgraph.operators = [subgraph.operators[k] for k in keep]
    original[:] = [original[k] for k in keep]


def _build(blob: bytes, arena: int):
    from tflite_micro.python.tflite_micro import runtime

    with captured_output() as log:
        try:
            interpreter = runtime.Interpreter.from_bytes(blob, arena_size=arena)
            error = None
        except (RuntimeError, ValueError) as err:
            interpreter, error = None, str(err)
    return interpreter, log[0], error


def probe(content: bytes) -> dict[str, Any]:
    """Finds every op TFLite Micro cannot run, and the arena size that lets the model allocate."""
    from ai_edge_litert.tools import flatbuffer_utils as fu

    model = fu.read_model_from_bytearray(bytearray(content))
    subgraph = model.subgraphs[0]
    original = list(range(len(subgraph.operators or [])))
    ids = {
        "input_ids": [int(i) for i in subgraph.inputs],
        "output_ids": [int(i) for i in subgraph.outputs],
    }
    ops = []
    for op in subgraph.operators or []:
        name = _op_name(model, op, fu)
        if name not in ops:
            ops.append(name)
    issues: list[dict[str, Any]] = []
    arena = max(10 * len(content), 16 * 1024)
    blob = content
    for _ in range(200):
        stage(f"micro-allocate ({len(issues)} issue(s) so far, arena {arena} B)")
        interpreter, log, error = _build(blob, arena)
        if interpreter is not None:
            return {
                "ops": ops,
                "issues": issues,
                "interpreter": interpreter if not issues else None,
                "arena": arena,
                **ids,
            }
        missing = re.search(r"Requested: (\d+), available (\d+), missing: (\d+)", log)
        if missing and arena < _ARENA_CAP:
            arena = min(_ARENA_CAP, max(2 * arena, arena + 2 * int(missing.group(3))))
            continue
        names = [_op_name(model, op, fu) for op in subgraph.operators]
        lines = [
            line.strip()
            for line in log.splitlines()
            if line.strip() and "RecordingMicroAllocator" not in line
        ]
        registration = re.search(r"Failed to get registration from op code (\w+)", log)
        failed_node = re.search(
            r"Node (\S+) \(number (\d+)\) failed to (prepare|init|invoke)", log
        )
        if registration:
            code = registration.group(1)
            if code == "CUSTOM":
                customs = [n for n in names if n.startswith("CUSTOM:")]
                customs.sort(key=lambda n: n.split(":", 1)[1] in _MICRO_CUSTOM)
                code = customs[0] if customs else "CUSTOM"
            positions = {k for k, n in enumerate(names) if n == code}
            reason = "TFLite Micro has no kernel registered for this op"
        elif failed_node:
            positions = {int(failed_node.group(2))}
            code = (
                names[int(failed_node.group(2))]
                if int(failed_node.group(2)) < len(names)
                else failed_node.group(1)
            )
            before = [
                line
                for line in lines
                if not line.startswith(("Node ", "Failed to", "TFLM"))
            ]
            reason = (
                "; ".join(before[-2:]) or f"the kernel failed to {failed_node.group(3)}"
            )
        else:
            issues.append(
                {
                    "op": None,
                    "nodes": [],
                    "reason": "; ".join(lines[-3:]) or error or "allocation failed",
                }
            )
            break
        if not positions:
            issues.append({"op": code, "nodes": [], "reason": reason})
            break
        issues.append(
            {
                "op": code,
                "nodes": sorted(original[p] for p in positions),
                "reason": reason,
            }
        )
        _drop_nodes(subgraph, positions, original)
        blob = bytes(fu.convert_object_to_bytearray(model))
    return {"ops": ops, "issues": issues, "interpreter": None, "arena": arena, **ids}


def _arena(interpreter) -> tuple[int | None, int | None]:
    """(total, head) bytes of the arena from TFLite Micro's recording allocator; the head holds the planned tensors."""
    with captured_output() as log:
        interpreter.print_allocations()
    found = [re.search(rf"Arena allocation {part} (\d+) bytes", log[0]) for part in ("total", "head")]
    return tuple(int(f.group(1)) if f else None for f in found)


def _litert_outputs(
    content: bytes, xs: list[np.ndarray], *, use_xnnpack: bool
) -> list[list[np.ndarray]]:
    interpreter = make_interpreter(content, num_threads=1, use_xnnpack=use_xnnpack)
    resize_inputs(interpreter, None)
    interpreter.allocate_tensors()
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    order = _input_order(interpreter, None)
    results = []
    for k in range(len(xs[0])):
        for pos, i in enumerate(order):
            interpreter.set_tensor(
                inputs[i]["index"], _feed(xs[pos][k : k + 1], inputs[i])
            )
        interpreter.invoke()
        results.append([np.array(interpreter.get_tensor(d["index"])) for d in outputs])
    return results


def _feed(x: np.ndarray, detail: dict) -> np.ndarray:
    if np.issubdtype(np.asarray(x).dtype, np.floating) or np.issubdtype(
        detail["dtype"], np.floating
    ):
        return quantize(np.asarray(x, dtype=np.float32), detail)
    return np.asarray(x).astype(detail["dtype"])


def _max_diff(a: list[list[np.ndarray]], b: list[list[np.ndarray]]) -> list[float]:
    diffs = []
    for j in range(len(a[0])):
        worst = 0.0
        for k in range(len(a)):
            x, y = a[k][j], b[k][j]
            if np.issubdtype(x.dtype, np.integer):
                d = np.abs(x.astype(np.int64) - y.astype(np.int64))
            else:
                d = np.abs(x.astype(np.float64) - y.astype(np.float64))
            worst = max(worst, float(d.max()) if d.size else 0.0)
        diffs.append(worst)
    return diffs


def check_micro(request: dict[str, Any]) -> dict[str, Any]:
    with open(request["tflite_path"], "rb") as handle:
        content = handle.read()
    stage("micro-load")
    found = probe(content)
    result: dict[str, Any] = {
        "ops": found["ops"],
        "issues": found["issues"],
        "notes": [],
    }
    interpreter = found["interpreter"]
    if interpreter is None:
        return result
    stage("litert-details")
    try:
        litert = make_interpreter(content, num_threads=1, use_xnnpack=False)
        result["notes"] += resize_inputs(litert, None)
        litert.allocate_tensors()
    except ValueError as err:
        result["issues"].append(
            {
                "op": None,
                "nodes": [],
                "reason": f"TFLite Micro needs static shapes: {err}",
            }
        )
        return result
    except RuntimeError as err:
        litert = None
        result["notes"].append(
            f"LiteRT could not load the model, so there is no comparison: {str(err).strip()[:200]}"
        )
    if litert is None:
        inputs = [
            _micro_detail(interpreter.get_input_details(i))
            for i in range(len(found["input_ids"]))
        ]
        order = list(range(len(inputs)))
    else:
        inputs, order = litert.get_input_details(), _input_order(litert, None)
    if request.get("data_path"):
        data = np.load(request["data_path"])
        xs = [data[f"x{pos}"] for pos in range(len(order))]
    else:
        rng = np.random.default_rng(request.get("seed", 0))
        xs = [
            np.concatenate(
                [_random_input(inputs[i], rng) for _ in range(request["num_samples"])]
            )
            for i in order
        ]
        result["notes"].append("no data given: compared on random inputs")
    stage("micro-invoke")
    micro_out = []
    num_outputs = len(found["output_ids"])
    for k in range(len(xs[0])):
        for pos, i in enumerate(order):
            interpreter.set_input(_feed(xs[pos][k : k + 1], inputs[i]), i)
        try:
            with captured_output() as log:
                interpreter.invoke()
        except RuntimeError as err:
            result["issues"].append(
                {
                    "op": None,
                    "nodes": [],
                    "reason": f"invoke failed: {log[0].strip() or err}",
                }
            )
            return result
        micro_out.append(
            [np.array(interpreter.get_output(j)) for j in range(num_outputs)]
        )
        if k == 0:
            result["arena_bytes"], result["arena_head_bytes"] = _arena(interpreter)
    result["num_samples"] = len(xs[0])
    if request.get("variants"):
        result["variants"] = [
            _check_variant(variant, xs, inputs, order, micro_out) for variant in request["variants"]
        ]
    if litert is None:
        return result
    stage("litert-compare")
    outputs = litert.get_output_details()
    try:
        reference = _litert_outputs(content, xs, use_xnnpack=False)
        xnnpack = _litert_outputs(content, xs, use_xnnpack=True)
    except (RuntimeError, ValueError) as err:
        result["notes"].append(
            f"LiteRT could not run the model, so there is no comparison: {str(err).strip()[:200]}"
        )
        return result
    result["outputs"] = [
        {
            "name": d["name"],
            "dtype": np.dtype(d["dtype"]).name,
            "scale": float(d["quantization"][0]),
            "zero_point": int(d["quantization"][1]),
        }
        for d in outputs
    ]
    result["max_abs_diff_reference"] = _max_diff(micro_out, reference)
    result["max_abs_diff_xnnpack"] = _max_diff(micro_out, xnnpack)
    return result


def _check_variant(
    variant: dict[str, Any], xs: list[np.ndarray], inputs, order: list[int], plain_out: list[list[np.ndarray]]
) -> dict[str, Any]:
    """Runs a rewritten model (compressed, re-planned) on the same inputs; compares with the plain model bit for bit."""
    with open(variant["path"], "rb") as handle:
        blob = handle.read()
    stage(f"micro-variant {variant['name']}")
    found = probe(blob)
    out: dict[str, Any] = {"name": variant["name"], "bytes": len(blob), "issues": found["issues"]}
    interpreter = found["interpreter"]
    if interpreter is None:
        return out
    mismatched = 0
    worst = 0.0
    for k in range(len(xs[0])):
        for pos, i in enumerate(order):
            interpreter.set_input(_feed(xs[pos][k : k + 1], inputs[i]), i)
        try:
            with captured_output() as log:
                interpreter.invoke()
        except RuntimeError as err:
            out["issues"].append({"op": None, "nodes": [], "reason": f"invoke failed: {log[0].strip() or err}"})
            return out
        got = [np.array(interpreter.get_output(j)) for j in range(len(plain_out[k]))]
        if k == 0:
            out["arena_bytes"], out["arena_head_bytes"] = _arena(interpreter)
        same = all(
            a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()
            for a, b in zip(got, plain_out[k])
        )
        if not same:
            mismatched += 1
            worst = max([worst] + _max_diff([got], [plain_out[k]]))
    out.update(num_samples=len(xs[0]), mismatched_samples=mismatched, max_abs_diff=worst)
    return out


def _micro_detail(detail: dict) -> dict:
    """A TFLite Micro input detail in LiteRT's form (shape, dtype, quantization)."""
    q = detail.get("quantization_parameters", {})
    scales, zeros = q.get("scales", []), q.get("zero_points", [])
    quant = (float(scales[0]), int(zeros[0])) if len(scales) == 1 else (0.0, 0)
    return {
        "shape": np.asarray(detail["shape"]),
        "dtype": detail["dtype"],
        "quantization": quant,
    }


def analyze(request: dict[str, Any]) -> dict[str, Any]:
    from ai_edge_litert import _pywrap_analyzer_wrapper

    with open(request["tflite_path"], "rb") as handle:
        content = handle.read()
    stage("analyze")
    return {"text": _pywrap_analyzer_wrapper.ModelAnalyzer(content, False, True)}


def main(argv: list[str]) -> int:
    from tfopt.measure._serve import die_with_parent

    if os.environ.get("TFOPT_PARENT_PID"):
        die_with_parent(int(os.environ["TFOPT_PARENT_PID"]), cleanup=os.environ.get("TFOPT_CLEANUP_DIR"))
    with open(argv[1]) as handle:
        request = json.load(handle)
    task = {"micro": check_micro, "analyze": analyze}[request["task"]]
    try:
        payload = {"ok": True, **task(request)}
    except (ValueError, RuntimeError, ImportError, IndexError) as err:
        payload = {"ok": False, "error": f"{type(err).__name__}: {err}"}
    with open(request["result_path"], "w") as handle:
        json.dump(payload, handle)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
