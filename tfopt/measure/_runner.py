"""Runs a .tflite in the LiteRT interpreter: latency, accuracy, XNNPACK coverage.

This module imports only numpy and ai_edge_litert (never TensorFlow), so it can be
run as a child process: `python -m tfopt.measure._runner REQUEST.json`. A model that
crashes the interpreter then kills the child, not the caller. `benchmark.py` owns
the public API; this file holds the measuring loop.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import numpy as np

_INT_RANGES = {np.int8: (-128, 127), np.uint8: (0, 255), np.int16: (-32768, 32767)}


def stage(name: str) -> None:
    """Tells the parent (through stderr) which step runs, so a crash can be placed."""
    print(f"tfopt-stage: {name}", file=sys.stderr, flush=True)


def make_interpreter(content: bytes, *, num_threads: int, use_xnnpack: bool):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.AUTO if use_xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    return Interpreter(model_content=content, num_threads=num_threads, experimental_op_resolver_type=resolver)


def resize_inputs(interpreter, input_shapes: dict[str, list[int]] | None) -> list[str]:
    """Fixes dynamic dims: a dynamic batch becomes 1; other dynamic dims need `input_shapes`."""
    notes = []
    input_shapes = input_shapes or {}
    for index, detail in enumerate(interpreter.get_input_details()):
        signature = [int(d) for d in detail.get("shape_signature", detail["shape"])]
        requested = input_shapes.get(detail["name"], input_shapes.get(str(index)))
        if requested is not None:
            interpreter.resize_tensor_input(detail["index"], [int(d) for d in requested], strict=False)
            notes.append(f"input {detail['name']!r} resized to {list(requested)}")
            continue
        if any(d < 0 for d in signature):
            if all(d >= 0 for d in signature[1:]):
                shape = [1] + signature[1:]
                interpreter.resize_tensor_input(detail["index"], shape, strict=False)
                notes.append(f"input {detail['name']!r} has a dynamic batch; using batch 1")
            else:
                raise ValueError(
                    f"input {detail['name']!r} has dynamic dimensions {signature} (-1 = dynamic). Pass "
                    f"input_shapes={{'{detail['name']}': [1, ...]}} (tfopt bench: --input_shape) with concrete sizes."
                )
    return notes


def quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    """Float data -> the input tensor's dtype, honouring scale and zero point."""
    dtype = detail["dtype"]
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if np.issubdtype(dtype, np.integer) and scale:
        low, high = _INT_RANGES.get(dtype, (np.iinfo(dtype).min, np.iinfo(dtype).max))
        return np.clip(np.round(x / scale + zero_point), low, high).astype(dtype)
    return x.astype(dtype)


def dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if np.issubdtype(y.dtype, np.integer) and scale:
        return (y.astype(np.float32) - zero_point) * scale
    return y.astype(np.float32)


def _random_input(detail: dict, rng) -> np.ndarray:
    dtype, shape = detail["dtype"], detail["shape"]
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -128), min(info.max, 127) + 1, size=shape).astype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(bool)
    return rng.standard_normal(shape).astype(dtype)


def delegated_ops(interpreter) -> dict[str, Any] | None:
    """Which original ops the default delegate (XNNPACK) took, from the execution plan.

    LiteRT has no public call for this; the interpreter's op details list the
    original nodes and then one DELEGATE node per partition. Walking back from each
    partition's outputs to its inputs names the nodes it replaced.
    """
    get = getattr(interpreter, "_get_ops_details", None)
    if get is None:
        return None
    ops = get()
    original = [op for op in ops if op["op_name"] != "DELEGATE"]
    partitions = [op for op in ops if op["op_name"] == "DELEGATE"]
    producer = {}
    for op in original:
        for t in op["outputs"]:
            producer[int(t)] = op
    covered: set[int] = set()
    for part in partitions:
        boundary = {int(t) for t in part["inputs"]}
        stack = [int(t) for t in part["outputs"]]
        while stack:
            tensor = stack.pop()
            if tensor in boundary:
                continue
            op = producer.get(tensor)
            if op is None or op["index"] in covered:
                continue
            covered.add(op["index"])
            stack.extend(int(t) for t in op["inputs"] if t >= 0)
    left = [f"{op['op_name']}#{op['index']}" for op in original if op["index"] not in covered]
    return {
        "total_ops": len(original),
        "delegated_ops": len(covered),
        "partitions": len(partitions),
        "undelegated": left,
    }


def measure(request: dict[str, Any]) -> dict[str, Any]:
    """Does the work of one benchmark request and returns a JSON-ready dict."""
    with open(request["tflite_path"], "rb") as handle:
        content = handle.read()
    result: dict[str, Any] = {"notes": []}
    stage("load")
    start = time.perf_counter()
    try:
        interpreter = make_interpreter(content, num_threads=request["num_threads"], use_xnnpack=request["use_xnnpack"])
    except (RuntimeError, ValueError) as err:
        raise ValueError(_explain_load_error(str(err))) from err
    signatures = interpreter.get_signature_list()
    if len(signatures) > 1:
        result["notes"].append(
            f"the model has {len(signatures)} signatures ({', '.join(signatures)}); LiteRT measured the first "
            "subgraph only. Split the model or export one signature per file to time the others."
        )
    stage("resize")
    result["notes"] += resize_inputs(interpreter, request.get("input_shapes"))
    stage("allocate")
    try:
        interpreter.allocate_tensors()
    except RuntimeError as err:
        raise ValueError(_explain_load_error(str(err))) from err
    result["init_ms"] = (time.perf_counter() - start) * 1e3
    result["xnnpack"] = delegated_ops(interpreter) if request["use_xnnpack"] else None
    if request.get("coverage_only"):
        return result
    inputs = interpreter.get_input_details()
    outputs = interpreter.get_output_details()
    result["inputs"] = [{"name": d["name"], "shape": d["shape"].tolist(), "dtype": np.dtype(d["dtype"]).name} for d in inputs]
    result["outputs"] = [{"name": d["name"], "shape": d["shape"].tolist(), "dtype": np.dtype(d["dtype"]).name} for d in outputs]
    data = np.load(request["data_path"]) if request.get("data_path") else None
    xs = [data[f"x{i}"] for i in range(len(inputs))] if data is not None else None
    order = _input_order(interpreter, request.get("input_names"))
    rng = np.random.default_rng(0)
    if xs is not None:
        feed = [quantize(xs[k][:1], inputs[i]) for k, i in enumerate(order)]
        feed_index = [inputs[i]["index"] for i in order]
    else:
        feed = [_random_input(d, rng) for d in inputs]
        feed_index = [d["index"] for d in inputs]
    stage("invoke")
    first = time.perf_counter()
    for index, array in zip(feed_index, feed):
        interpreter.set_tensor(index, array)
    interpreter.invoke()
    result["first_invoke_ms"] = (time.perf_counter() - first) * 1e3
    for _ in range(request["warmup_runs"]):
        interpreter.invoke()
    times = []
    for _ in range(request["num_runs"]):
        t0 = time.perf_counter_ns()
        interpreter.invoke()
        times.append((time.perf_counter_ns() - t0) / 1e6)
    result["latencies_ms"] = times
    if data is not None and "y" in data.files:
        stage("accuracy")
        result.update(_accuracy(interpreter, xs, data["y"], inputs, outputs, order))
    return result


def _input_order(interpreter, names: list[str] | None) -> list[int]:
    """Position in get_input_details() of each data array (data follows the signature / model order)."""
    details = interpreter.get_input_details()
    if len(details) == 1:
        return [0]
    signatures = interpreter.get_signature_list()
    if signatures:
        key = next(iter(signatures))
        runner = interpreter.get_signature_runner(key)
        by_name = runner.get_input_details()
        wanted = names or signatures[key]["inputs"]
        index_of = {d["index"]: i for i, d in enumerate(details)}
        if all(n in by_name for n in wanted):
            return [index_of[by_name[n]["index"]] for n in wanted]
    return list(range(len(details)))


def _accuracy(interpreter, xs, y, inputs, outputs, order) -> dict[str, Any]:
    out = outputs[0]
    if int(np.prod(out["shape"][1:])) < 2:
        return {"accuracy": None, "notes_accuracy": "output has a single value; accuracy needs class scores"}
    labels = np.asarray(y)
    if labels.ndim > 1:
        labels = labels.argmax(axis=-1)
    n = len(labels)
    correct = 0
    predictions = np.empty(n, dtype=np.int64)
    for k in range(n):
        for pos, i in enumerate(order):
            interpreter.set_tensor(inputs[i]["index"], quantize(xs[pos][k : k + 1], inputs[i]))
        interpreter.invoke()
        scores = dequantize(interpreter.get_tensor(out["index"]), out).reshape(-1)
        predictions[k] = int(np.argmax(scores))
        correct += int(predictions[k] == labels[k])
    return {"accuracy": correct / n, "num_examples": n, "predictions": predictions.tolist()}


def _explain_load_error(message: str) -> str:
    if "custom op" in message.lower() or "unresolved" in message.lower():
        return (
            f"the model uses ops this LiteRT build does not have ({message.strip().splitlines()[0]}). Custom ops "
            "need their kernels registered (InterpreterWithCustomOps); convert without custom ops to benchmark it here."
        )
    return f"the LiteRT interpreter could not load the model: {message.strip()}"


def main(argv: list[str]) -> int:
    with open(argv[1]) as handle:
        request = json.load(handle)
    try:
        payload = {"ok": True, **measure(request)}
    except (ValueError, RuntimeError) as err:
        payload = {"ok": False, "error": str(err)}
    with open(request["result_path"], "w") as handle:
        json.dump(payload, handle)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
