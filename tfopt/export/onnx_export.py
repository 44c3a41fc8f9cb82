"""ONNX export through tf2onnx, with a parity check in onnxruntime on real inputs.

tf2onnx 1.17's `from_keras` cannot read Keras 3 models (it fails on Keras 3's
`keras_tensor_*` names), so tfopt traces the model in inference mode as a
`tf.function` with one `TensorSpec` per model input (batch axis left dynamic) and
converts that with `tf2onnx.convert.from_function`. This path works for Keras 3 and
tf_keras models alike. The ONNX graph's inputs and outputs are named after the Keras
model's input and output names.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
import time
from typing import Any

import numpy as np

from tfopt._io import atomic_write
from tfopt._keras import is_keras_model, keras_flavor, load_model, optional_import
from tfopt.errors import InvalidArgumentError, InvalidTypeError, UnsupportedModelError

DEFAULT_OPSET = 17
_PIP = "tf2onnx onnx onnxruntime"
_PROTO_LIMIT = 2**31 - 1  # protobuf cannot serialize a single message above 2 GiB
_AUTO_NAME = re.compile(r"keras_tensor(_\d+)?")


@dataclasses.dataclass
class OnnxExportResult:
    """What `export_onnx` wrote and how closely onnxruntime reproduces the Keras model.

    Attributes:
        path: the .onnx file written.
        opset: ONNX opset of the graph.
        size_bytes: file size.
        keras_flavor: `"keras3"` or `"tf_keras"`.
        input_names / output_names: graph input and output names (feed / fetch these).
        op_counts: ONNX op type -> number of nodes.
        num_samples: inputs compared in onnxruntime (`None` without `data`).
        max_abs_diff / mean_abs_diff: largest / mean absolute difference between the
            onnxruntime and Keras outputs over those inputs (`None` without `data`).
        seconds: wall time of conversion plus the parity check.
        versions: tf2onnx / onnx / onnxruntime versions used.

    Example:

    ```python
    result = tfopt.export_onnx(model, "model.onnx", data=x_test)
    print(result.summary())  # max_abs_diff vs Keras on x_test
    json.dump(result.to_dict(), open("onnx.json", "w"))
    ```
    """

    path: str
    opset: int
    size_bytes: int
    keras_flavor: str
    input_names: list[str]
    output_names: list[str]
    op_counts: dict[str, int]
    num_samples: int | None = None
    max_abs_diff: float | None = None
    mean_abs_diff: float | None = None
    seconds: float = 0.0
    versions: dict[str, str] = dataclasses.field(default_factory=dict)

    def summary(self) -> str:
        lines = [
            f"ONNX export: {self.path} ({self.size_bytes / 1024:.1f} KiB, opset {self.opset}, "
            f"from {self.keras_flavor})",
            f"  inputs:  {', '.join(self.input_names)}",
            f"  outputs: {', '.join(self.output_names)}",
            "  ops:     " + ", ".join(f"{op} x{n}" for op, n in sorted(self.op_counts.items())),
        ]
        if self.num_samples is None:
            lines.append("  parity:  not checked (pass data=... to compare with onnxruntime)")
        else:
            lines.append(
                f"  parity:  max |onnx - keras| = {self.max_abs_diff:.3g}, mean = {self.mean_abs_diff:.3g} "
                f"over {self.num_samples} inputs (onnxruntime)"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _graph_names(names: list[str], fallback: str) -> list[str]:
    """Valid, unique tensor names for the ONNX graph (TF rejects some characters)."""
    out: list[str] = []
    for i, name in enumerate(names):
        if not name or _AUTO_NAME.fullmatch(str(name)):  # Keras 3 auto names say nothing
            name = fallback if len(names) == 1 else f"{fallback}_{i}"
        clean = re.sub(r"[^A-Za-z0-9_.\-]", "_", str(name))
        if not re.match(r"[A-Za-z]", clean):
            clean = f"{fallback}_{clean}"
        while clean in out:
            clean = f"{clean}_{i}"
        out.append(clean)
    return out


def _io_specs(model, tf):
    inputs = getattr(model, "inputs", None)
    outputs = getattr(model, "outputs", None)
    if not inputs or not outputs:
        raise UnsupportedModelError(
            f"Model {model.name!r} has no symbolic inputs/outputs (a subclassed or unbuilt model), so its "
            "input signature is unknown. Build it with keras.Input (functional or Sequential), or call it "
            "once on data, then export again."
        )
    input_names = _graph_names(
        list(getattr(model, "input_names", None) or [t.name for t in inputs]), "input"
    )
    raw_outputs = list(getattr(model, "output_names", None) or [t.name for t in outputs])
    if len(raw_outputs) == 1 and _AUTO_NAME.fullmatch(str(raw_outputs[0])) and model.layers:
        raw_outputs = [model.layers[-1].name]  # Keras 3 Sequential: name the output after its last layer
    output_names = _graph_names(raw_outputs, "output")
    if len(input_names) != len(inputs):
        input_names = _graph_names([None] * len(inputs), "input")
    if len(output_names) != len(outputs):
        output_names = _graph_names([None] * len(outputs), "output")
    specs = []
    for tensor, name in zip(inputs, input_names):
        dtype = tf.as_dtype(getattr(tensor.dtype, "name", tensor.dtype))
        specs.append(tf.TensorSpec([None, *tuple(tensor.shape)[1:]], dtype, name=name))
    return specs, input_names, output_names


def _unsupported_nodes(model_proto, onnx) -> list[str]:
    """Nodes tf2onnx left as TensorFlow ops (it converts with continue_on_error=True)."""
    bad = []
    opset_by_domain = {o.domain: o.version for o in model_proto.opset_import}
    for node in model_proto.graph.node:
        domain = node.domain or ""
        if domain not in ("", "ai.onnx"):
            continue
        if not onnx.defs.has(node.op_type, max(opset_by_domain.get(domain, 1), 1), domain):
            bad.append(f"{node.op_type} (node {node.name})")
    return bad


def _parity(model, onnx_bytes: bytes, input_names, output_names, data, num_samples: int):
    ort = optional_import("onnxruntime", _PIP)
    xs = data[0] if isinstance(data, tuple) else data
    xs = list(xs) if isinstance(xs, list) else [xs]
    if len(xs) != len(input_names):
        raise InvalidArgumentError(
            f"data holds {len(xs)} input array(s) but the model has {len(input_names)} input(s) "
            f"({input_names}). Pass x (or (x, y), or a list of arrays, one per input)."
        )
    xs = [np.asarray(x)[:num_samples] for x in xs]
    if any(len(x) == 0 for x in xs):
        raise InvalidArgumentError("data is empty: pass at least one input sample for the parity check.")
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    feeds = {}
    for meta, name, x in zip(session.get_inputs(), input_names, xs):
        dtype = np.dtype({"tensor(float)": "float32", "tensor(double)": "float64"}.get(meta.type, x.dtype))
        feeds[name] = x.astype(dtype)
    onnx_out = session.run(output_names, feeds)
    keras_out = model.predict(feeds[input_names[0]] if len(xs) == 1 else list(feeds.values()), verbose=0)
    keras_out = keras_out if isinstance(keras_out, (list, tuple)) else [keras_out]
    diffs = np.concatenate(
        [np.abs(np.asarray(a, "float64") - np.asarray(b, "float64")).ravel() for a, b in zip(onnx_out, keras_out)]
    )
    return len(xs[0]), float(diffs.max()), float(diffs.mean())


def export_onnx(
    model,
    path: str | os.PathLike,
    *,
    opset: int | None = None,
    data: Any = None,
    num_samples: int = 256,
) -> OnnxExportResult:
    """Exports a float Keras model to ONNX and (optionally) checks it in onnxruntime.

    Use it to run a Keras model (including a stripped pruned / clustered / low-rank /
    distilled one) in ONNX runtimes. The model is traced in inference mode (dropout off,
    BatchNormalization on moving statistics) with a dynamic batch axis. The file is written
    atomically: a failed export never leaves a partial file.

    Args:
        model: a Keras 3 or tf_keras model (functional or Sequential), or the path of a
            .keras / .h5 file.
        path: where to write the .onnx file.
        opset: ONNX opset version. Defaults to `None`, meaning 17 (supported by every
            onnxruntime since 1.11).
        data: real inputs for the parity check: an array, `(x, y)` (y is ignored) or a list of
            arrays for a multi-input model. Defaults to `None` (no parity check).
        num_samples: at most this many inputs from `data` are compared. Defaults to `256`.

    Returns:
        An `OnnxExportResult` (`summary()`, `to_dict()`), with `max_abs_diff` and
        `mean_abs_diff` against the Keras model when `data` is given.

    Raises:
        ImportError: if tf2onnx / onnx / onnxruntime are missing (with the pip command).
        TypeError: if `model` is neither a Keras model nor a path.
        ValueError: if tf2onnx cannot convert some op (the ops and nodes are named), or the
            data does not match the model inputs.
        NotImplementedError: for subclassed models without a known input signature, or
            graphs above protobuf's 2 GiB limit.

    Example:

    ```python
    result = tfopt.export_onnx(model, "model.onnx", data=x_test[:256])
    print(result.summary())  # parity: max |onnx - keras| = 4.8e-07 ...
    ```
    """
    start = time.time()
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model)
    if not is_keras_model(model):
        raise InvalidTypeError(
            f"export_onnx expects a Keras model or a .keras/.h5 path. Received: {type(model).__name__}. "
            "For a .tflite file use tf2onnx's command line (python -m tf2onnx.convert --tflite ...)."
        )
    if opset is None:
        opset = DEFAULT_OPSET
    if not isinstance(opset, int) or isinstance(opset, bool) or not 7 <= opset <= 21:
        raise InvalidArgumentError(f"opset must be an int between 7 and 21 (tf2onnx 1.17's range). Received: opset={opset!r}.")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise InvalidArgumentError(f"num_samples must be a positive int. Received: num_samples={num_samples!r}.")
    tf2onnx = optional_import("tf2onnx", _PIP)
    onnx = optional_import("onnx", _PIP)
    import tensorflow as tf

    specs, input_names, output_names = _io_specs(model, tf)

    def forward(*args):
        outputs = model(args[0] if len(args) == 1 else list(args), training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        return {name: tf.identity(out) for name, out in zip(output_names, outputs)}

    function = tf.function(forward, input_signature=specs)
    try:
        model_proto, _ = tf2onnx.convert.from_function(function, input_signature=specs, opset=opset)
    except Exception as err:  # noqa: BLE001 - tf2onnx raises many types; re-raised with context
        raise InvalidArgumentError(
            f"tf2onnx could not convert model {model.name!r} at opset {opset}: {type(err).__name__}: {err}. "
            "Try another opset, or replace the layer that uses this op."
        ) from err
    bad = _unsupported_nodes(model_proto, onnx)
    if bad:
        raise InvalidArgumentError(
            f"tf2onnx has no ONNX opset-{opset} conversion for {len(bad)} TensorFlow op(s): {bad}. "
            "Try a newer opset (e.g. opset=18), replace the layer that uses the op, or export to TFLite instead."
        )
    if model_proto.ByteSize() > _PROTO_LIMIT:
        raise UnsupportedModelError(
            f"The ONNX graph is {model_proto.ByteSize() / 2**30:.1f} GiB, above protobuf's 2 GiB limit. "
            "Use tf2onnx directly with large_model=True (external data format)."
        )
    for value in [*model_proto.graph.input, *model_proto.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].dim_param:  # tf2onnx names the dynamic batch axis "unk__<n>"
            dims[0].dim_param = "batch"
    content = model_proto.SerializeToString()
    path = atomic_write(path, content)
    result = OnnxExportResult(
        path=path,
        opset=opset,
        size_bytes=len(content),
        keras_flavor=keras_flavor(model),
        input_names=input_names,
        output_names=output_names,
        op_counts=dict(collections.Counter(node.op_type for node in model_proto.graph.node)),
        versions={"tf2onnx": tf2onnx.__version__, "onnx": onnx.__version__},
    )
    if data is not None:
        result.num_samples, result.max_abs_diff, result.mean_abs_diff = _parity(
            model, content, input_names, output_names, data, num_samples
        )
        result.versions["onnxruntime"] = optional_import("onnxruntime", _PIP).__version__
    result.seconds = time.time() - start
    return result
