"""Runs a .tflite in the LiteRT interpreter: timing, outputs, per-op outputs, XNNPACK coverage.

This module imports only numpy and ai_edge_litert (never TensorFlow) and only
ever runs in a child process: the warm worker (`tfopt.measure._serve`) calls
`run_task`, and `python -m tfopt.measure._runner REQUEST.json` runs one
benchmark request from files (the one-shot path of `_isolate.run_child`). A
model that crashes the interpreter then kills the child, not the caller.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

_INT_RANGES = {np.int8: (-128, 127), np.uint8: (0, 255), np.int16: (-32768, 32767)}
_stage_sink: Callable[[str], None] | None = None


def set_stage_sink(sink: Callable[[str], None] | None) -> None:
    """Where `stage` reports go (the worker's pipe); None means stderr."""
    global _stage_sink
    _stage_sink = sink


def stage(name: str) -> None:
    """Tells the parent which step runs, so a crash can be placed."""
    if _stage_sink is not None:
        _stage_sink(name)
    else:
        print(f"tfopt-stage: {name}", file=sys.stderr, flush=True)


def warm_up() -> None:
    """Imports the runtime now, so the first task pays no import."""
    from ai_edge_litert.interpreter import Interpreter  # noqa: F401


def make_interpreter(content: bytes, *, num_threads: int, use_xnnpack: bool, preserve: bool = False):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.AUTO if use_xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    return Interpreter(
        model_content=content,
        num_threads=num_threads,
        experimental_op_resolver_type=resolver,
        experimental_preserve_all_tensors=preserve,
    )


def load(content: bytes, *, num_threads: int = 1, use_xnnpack: bool = True, preserve: bool = False,
         input_shapes: dict | None = None, fallback: bool = False) -> tuple[Any, list[str]]:
    """A ready interpreter (resized and allocated) and notes. `fallback` retries without XNNPACK."""
    notes: list[str] = []
    stage("load")
    try:
        interpreter = make_interpreter(content, num_threads=num_threads, use_xnnpack=use_xnnpack, preserve=preserve)
        stage("resize")
        notes += resize_inputs(interpreter, input_shapes)
        stage("allocate")
        interpreter.allocate_tensors()
    except RuntimeError as err:
        if not (fallback and use_xnnpack):
            raise ValueError(_explain_load_error(str(err))) from err
        # XNNPACK refuses some graphs (seen on LiteRT Quantizer models with float ops kept);
        # the built-in kernels compute the same thing.
        interpreter, more = load(content, num_threads=num_threads, use_xnnpack=False, preserve=preserve,
                                 input_shapes=input_shapes)
        notes += more + ["XNNPACK refused the model; the built-in kernels ran it"]
    except ValueError as err:
        raise ValueError(_explain_load_error(str(err))) from err
    return interpreter, notes


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
                interpreter.resize_tensor_input(detail["index"], [1] + signature[1:], strict=False)
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
    """Quantized outputs -> float32 with scale and zero point; float -> float32; other ints unchanged."""
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if np.issubdtype(y.dtype, np.integer) and scale:
        return (y.astype(np.float32) - zero_point) * np.float32(scale)
    return y.astype(np.float32) if y.dtype.kind == "f" else y.copy()


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
    producer = {int(t): op for op in original for t in op["outputs"]}
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
    return {"total_ops": len(original), "delegated_ops": len(covered), "partitions": len(partitions), "undelegated": left}


def _input_order(interpreter, names: list[str] | None, xs: list[np.ndarray] | None = None) -> list[int]:
    """Position in get_input_details() of each data array.

    `names` (signature or tensor names, from a dict of inputs) decide when given.
    Otherwise arrays follow the interpreter's input order, unless their shapes
    only fit another order (converters do not keep the Keras input order), in
    which case each array goes to the one input of its shape.
    """
    details = interpreter.get_input_details()
    if not names:
        order = list(range(len(details)))
        if xs is None or len(xs) != len(details) or len(details) == 1:
            return order
        fits = [[_fits(details[i], x) for i in order] for x in xs]
        if all(fits[pos][pos] for pos in order):
            return order
        choices = [[i for i in order if fits[pos][i]] for pos in order]
        if all(len(c) == 1 for c in choices) and len({c[0] for c in choices}) == len(order):
            return [c[0] for c in choices]
        return order
    position = {d["name"]: i for i, d in enumerate(details)}
    signatures = interpreter.get_signature_list()
    if signatures:
        index_of = {d["index"]: i for i, d in enumerate(details)}
        runner = interpreter.get_signature_runner(next(iter(signatures)))
        for key, detail in runner.get_input_details().items():
            position.setdefault(key, index_of[detail["index"]])
    missing = [n for n in names if n not in position]
    if missing:
        raise ValueError(f"the .tflite has no input named {missing}; its inputs are {sorted(position)}.")
    return [position[n] for n in names]


def _fits(detail: dict, x: np.ndarray) -> bool:
    """True when one example of `x` has as many values as one example of the input."""
    shape = [int(d) for d in detail.get("shape_signature", detail["shape"])]
    per_example = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return per_example > 0 and x[:1].size == per_example


def _plain(detail: dict) -> dict[str, Any]:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return {
        "name": detail["name"],
        "shape": [int(d) for d in detail["shape"]],
        "dtype": np.dtype(detail["dtype"]).name,
        "scale": float(scale),
        "zero_point": int(zero_point),
    }


def output_order(interpreter) -> tuple[list[int], list[str]]:
    """Positions in get_output_details() in the signature's output order, and the signature's names.

    The interpreter's own output order is not the Keras model's (the converter
    numbers outputs by sorted name), so with one signature its order and names
    are used; otherwise the interpreter's order and tensor names.
    """
    outputs = interpreter.get_output_details()
    positions, names = list(range(len(outputs))), [d["name"] for d in outputs]
    signatures = interpreter.get_signature_list()
    if len(signatures) == 1:
        key = next(iter(signatures))
        by_index = {d["index"]: i for i, d in enumerate(outputs)}
        runner_outputs = interpreter.get_signature_runner(key).get_output_details()
        wanted = [n for n in signatures[key]["outputs"] if n in runner_outputs]
        picked = [by_index.get(runner_outputs[n]["index"]) for n in wanted]
        if len(picked) == len(outputs) and None not in picked and len(set(picked)) == len(picked):
            positions, names = picked, wanted
    return positions, names


def describe(interpreter) -> dict[str, Any]:
    """Inputs and outputs as plain data; outputs in the signature's order, with its names."""
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    positions, names = output_order(interpreter)
    signatures = interpreter.get_signature_list()
    return {
        "inputs": [_plain(d) for d in inputs],
        "outputs": [_plain(outputs[i]) for i in positions],
        "output_names": names,
        "signatures": {k: {"inputs": list(v["inputs"]), "outputs": list(v["outputs"])} for k, v in signatures.items()},
    }


def run_outputs(interpreter, xs: list[np.ndarray], *, names: list[str] | None = None, batch_size: int = 1) -> list[np.ndarray]:
    """Every output of the model on every example, dequantized; runs in batches when the batch is dynamic."""
    details = interpreter.get_input_details()
    if len(xs) != len(details):
        raise ValueError(f"the .tflite has {len(details)} inputs but the data holds {len(xs)} arrays.")
    order = _input_order(interpreter, names, xs)
    n = len(xs[0])
    dynamic = all(len(s) and s[0] == -1 for s in (list(d.get("shape_signature", d["shape"])) for d in details))
    step = max(1, min(batch_size, n)) if dynamic else max(1, int(details[0]["shape"][0]) if len(details[0]["shape"]) else 1)
    feeds = []
    for pos, i in enumerate(order):
        _check_example_shape(details[i], xs[pos], 1 if dynamic else step)
        feeds.append((i, quantize(xs[pos], details[i])))
    outputs = interpreter.get_output_details()
    raw: list[list[np.ndarray]] = [[] for _ in outputs]
    stage("predict")
    set_tensor, get_tensor, invoke = interpreter.set_tensor, interpreter.get_tensor, interpreter.invoke
    for start in range(0, n, step):
        m = min(step, n - start)
        if dynamic and int(details[0]["shape"][0]) != m:
            for d in details:
                interpreter.resize_tensor_input(d["index"], [m, *[int(v) for v in d["shape"][1:]]], strict=False)
            interpreter.allocate_tensors()
            details, outputs = interpreter.get_input_details(), interpreter.get_output_details()
        for i, x in feeds:
            chunk = x[start : start + step]
            if m < step and not dynamic:  # a fixed batch: pad the last chunk, keep m rows of the outputs
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], step - m, axis=0)])
            set_tensor(details[i]["index"], chunk.reshape(details[i]["shape"]))
        invoke()
        batch = m if dynamic else step
        for k, detail in enumerate(outputs):
            value = get_tensor(detail["index"])
            raw[k].append(value[:m] if value.ndim and value.shape[0] == batch else value[None])
    return [dequantize(np.concatenate(r), d) for r, d in zip(raw, outputs)]


def _check_example_shape(detail: dict, x: np.ndarray, batch: int) -> None:
    shape = [int(d) for d in detail["shape"]]
    if len(x) and x[:1].size * batch != int(np.prod(shape)):
        raise ValueError(
            f"input {detail['name']!r} takes {shape[1:]} per example; the data holds {list(x.shape[1:])}. "
            "Pass data shaped like the model's input."
        )


def _set_input(interpreter, detail: dict, x: np.ndarray) -> None:
    shape = [int(d) for d in detail["shape"]]
    if x.size != int(np.prod(shape)):
        raise ValueError(
            f"input {detail['name']!r} takes {shape[1:]} per example; the data holds {list(x.shape[1:])}. "
            "Pass data shaped like the model's input."
        )
    interpreter.set_tensor(detail["index"], quantize(x.reshape(shape), detail))


def op_outputs(content: bytes, xs: list[np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """(tensor name, float values over examples) for each op output, in execution order."""
    from tfopt.analyze.flatbuffer import read_model

    interpreter, _ = load(content, preserve=True, fallback=True)
    graph = read_model(content).subgraphs[0]
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    ids = [int(t) for op in graph.operators for t in (op.outputs if op.outputs is not None else [])]
    collected: dict[int, list[np.ndarray]] = {i: [] for i in ids if i in details}
    inputs = interpreter.get_input_details()
    if len(xs) != len(inputs):
        raise ValueError(f"the .tflite has {len(inputs)} inputs but the data holds {len(xs)} arrays.")
    order = _input_order(interpreter, None, xs)
    stage("op-outputs")
    for k in range(len(xs[0])):
        for pos, i in enumerate(order):
            _set_input(interpreter, inputs[i], xs[pos][k : k + 1])
        interpreter.invoke()
        for index in collected:
            try:
                value = interpreter.get_tensor(index)
            except ValueError:
                continue
            collected[index].append(dequantize(value, details[index])[0] if value.ndim else value)
    return [
        (details[i]["name"], np.stack(v))
        for i, v in collected.items()
        if v and len(v) == len(xs[0]) and v[0].dtype.kind == "f"
    ]


def measure(request: dict[str, Any]) -> dict[str, Any]:
    """One benchmark: init, first invoke, warm-up, timed runs; outputs on the data when asked."""
    content = request["content"] if "content" in request else open(request["tflite_path"], "rb").read()
    result: dict[str, Any] = {"notes": []}
    start = time.perf_counter()
    interpreter, notes = load(content, num_threads=request["num_threads"], use_xnnpack=request["use_xnnpack"],
                              input_shapes=request.get("input_shapes"))
    result["init_ms"] = (time.perf_counter() - start) * 1e3
    result["notes"] += notes
    signatures = interpreter.get_signature_list()
    if len(signatures) > 1:
        result["notes"].append(
            f"the model has {len(signatures)} signatures ({', '.join(signatures)}); LiteRT measured the first "
            "subgraph only. Split the model or export one signature per file to time the others."
        )
    result["xnnpack"] = delegated_ops(interpreter) if request["use_xnnpack"] else None
    if request.get("coverage_only"):
        return result
    inputs = interpreter.get_input_details()
    info = describe(interpreter)
    result["inputs"] = [{k: d[k] for k in ("name", "shape", "dtype")} for d in info["inputs"]]
    result["outputs"] = [{k: d[k] for k in ("name", "shape", "dtype")} for d in info["outputs"]]
    xs = request.get("xs")
    if xs is None and request.get("data_path"):
        data = np.load(request["data_path"])
        xs = [data[f"x{i}"] for i in range(len(inputs))]
    if xs is not None and len(xs) == len(inputs):
        order = _input_order(interpreter, request.get("input_names"), xs)
        by_detail = [None] * len(inputs)
        for pos, i in enumerate(order):
            by_detail[i] = xs[pos]
        xs = by_detail
    rng = np.random.default_rng(0)
    feed = []
    for pos, detail in enumerate(inputs):
        batch = int(detail["shape"][0]) if len(detail["shape"]) else 1
        if xs is not None and pos < len(xs) and len(xs[pos]) >= batch and xs[pos][:batch].size == int(np.prod(detail["shape"])):
            feed.append(quantize(xs[pos][:batch].reshape(detail["shape"]), detail))
        else:
            feed.append(_random_input(detail, rng))
    stage("invoke")
    first = time.perf_counter()
    for detail, array in zip(inputs, feed):
        interpreter.set_tensor(detail["index"], array)
    interpreter.invoke()
    result["first_invoke_ms"] = (time.perf_counter() - first) * 1e3
    for _ in range(request["warmup_runs"]):
        interpreter.invoke()
    times = np.empty(request["num_runs"], dtype=np.float64)
    clock, invoke = time.perf_counter_ns, interpreter.invoke
    for k in range(request["num_runs"]):
        t0 = clock()
        invoke()
        times[k] = clock() - t0
    result["latencies_ms"] = times / 1e6
    if xs is not None and request.get("want_outputs"):
        outputs = run_outputs(interpreter, xs, batch_size=1)
        result["predictions"] = [outputs[i] for i in output_order(interpreter)[0]]
    return result


def run_task(task: str, request: dict[str, Any]) -> dict[str, Any]:
    """One worker task on the bytes in `request["content"]`."""
    if task == "benchmark":
        return measure(request)
    if task == "outputs":
        interpreter, notes = load(request["content"], num_threads=request.get("num_threads", 1),
                                  use_xnnpack=request.get("use_xnnpack", True), fallback=True)
        info = describe(interpreter)
        outputs = run_outputs(interpreter, request["xs"], names=request.get("input_names"),
                              batch_size=request.get("batch_size", 1))
        positions, _ = output_order(interpreter)
        return {**info, "predictions": [outputs[i] for i in positions], "notes": notes}
    if task == "describe":
        interpreter, notes = load(request["content"], fallback=True)
        return {"notes": notes, **describe(interpreter)}
    if task == "op_outputs":
        return {"op_outputs": op_outputs(request["content"], request["xs"])}
    if task == "analyze":
        from ai_edge_litert import _pywrap_analyzer_wrapper

        stage("analyze")
        return {"text": _pywrap_analyzer_wrapper.ModelAnalyzer(request["content"], False, True)}
    raise KeyError(f"unknown measurement task {task!r}")


def _explain_load_error(message: str) -> str:
    if "custom op" in message.lower() or "unresolved" in message.lower():
        return (
            f"the model uses ops this LiteRT build does not have ({message.strip().splitlines()[0]}). Custom ops "
            "need their kernels registered (InterpreterWithCustomOps); convert without custom ops to benchmark it here."
        )
    if message.startswith(("input ", "the LiteRT interpreter")):
        return message
    return f"the LiteRT interpreter could not load the model: {message.strip()}"


def main(argv: list[str]) -> int:
    """One-shot mode: `python -m tfopt.measure._runner REQUEST.json` (see `_isolate.run_child`)."""
    from tfopt.measure._child import die_with_parent

    if os.environ.get("TFOPT_PARENT_PID"):
        die_with_parent(int(os.environ["TFOPT_PARENT_PID"]), cleanup=os.environ.get("TFOPT_CLEANUP_DIR"))
    with open(argv[1]) as handle:
        request = json.load(handle)
    try:
        payload = {"ok": True, **measure(request)}
        payload["latencies_ms"] = np.asarray(payload["latencies_ms"]).tolist()
        payload.pop("predictions", None)
    except (ValueError, RuntimeError) as err:
        payload = {"ok": False, "error": str(err)}
    with open(request["result_path"], "w") as handle:
        json.dump(payload, handle)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
