"""Parity check: does a quantized model (QAT Keras model or .tflite) behave like its reference?

`compare(reference, candidate, data)` runs both on the same real inputs and
reports top-1 agreement, max / mean absolute error, and per-output SNR and
cosine similarity. Either side may be a Keras model (Keras 3, tf_keras, or a
tfmot QAT model) or a .tflite (bytes, path or `ConversionResult`). When it can
match intermediate tensors - by layer name between Keras models and .tflite
tensor names, or by tensor name between two .tflite files - it also measures
each layer and names the first one whose SNR falls below a threshold.

.tflite files run in-process on `ai_edge_litert` (XNNPACK on), one example at a
time at the batch size they were converted with.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import numpy as np

from tfopt import _keras
from tfopt.analyze.flatbuffer import tflite_bytes
from tfopt.errors import InvalidArgumentError, InvalidTypeError

# --- pure metrics (plain numpy) ------------------------------------------------------------------


def snr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Signal-to-noise ratio of `candidate` against `reference`, in dB (inf when identical)."""
    reference = np.asarray(reference, np.float64)
    noise = float(np.sum((reference - np.asarray(candidate, np.float64)) ** 2))
    signal = float(np.sum(reference**2))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def cosine_similarity(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean over examples (first axis) of the cosine between flattened outputs; 1.0 when both are zero."""
    a = np.asarray(reference, np.float64).reshape(len(reference), -1)
    b = np.asarray(candidate, np.float64).reshape(len(candidate), -1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.sum(a * b, axis=1)
    both_zero = (np.linalg.norm(a, axis=1) == 0) & (np.linalg.norm(b, axis=1) == 0)
    values = np.where(both_zero, 1.0, dots / np.where(norms == 0, 1.0, norms))
    return float(np.mean(values))


def top1_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Fraction of examples whose argmax over the last axis is the same."""
    a = np.asarray(reference).reshape(len(reference), -1)
    b = np.asarray(candidate).reshape(len(candidate), -1)
    return float(np.mean(np.argmax(a, axis=-1) == np.argmax(b, axis=-1)))


# --- results --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OutputParity:
    """Agreement of one model output."""

    name: str
    max_abs_error: float
    mean_abs_error: float
    snr_db: float
    cosine: float
    top1_agreement: float | None


@dataclasses.dataclass(frozen=True)
class LayerParity:
    """Agreement of one intermediate layer / op output (measured on a few examples)."""

    name: str
    candidate_name: str
    snr_db: float
    cosine: float
    max_abs_error: float


@dataclasses.dataclass(frozen=True)
class ParityResult:
    """How closely `candidate` reproduces `reference` on the same inputs (see `compare`)."""

    reference: str
    candidate: str
    num_examples: int
    top1_agreement: float | None
    max_abs_error: float
    mean_abs_error: float
    outputs: tuple[OutputParity, ...]
    layers: tuple[LayerParity, ...] = ()
    first_divergence: str | None = None
    divergence_snr_db: float = 20.0
    reference_accuracy: float | None = None
    candidate_accuracy: float | None = None
    notes: tuple[str, ...] = ()

    def summary(self) -> str:
        """A readable report."""
        lines = [f"parity of {self.candidate} against {self.reference} on {self.num_examples} examples"]
        if self.top1_agreement is not None:
            lines.append(f"  top-1 agreement: {100 * self.top1_agreement:.2f}%")
        if self.reference_accuracy is not None:
            lines.append(
                f"  accuracy: reference {100 * self.reference_accuracy:.2f}%, candidate {100 * self.candidate_accuracy:.2f}%"
            )
        lines.append(f"  max abs error {self.max_abs_error:.4g}, mean abs error {self.mean_abs_error:.4g}")
        for out in self.outputs:
            lines.append(f"  output {out.name}: SNR {out.snr_db:.1f} dB, cosine {out.cosine:.5f}")
        if self.layers:
            lines.append(f"  {len(self.layers)} layers matched; lowest SNR first 5:")
            for layer in sorted(self.layers, key=lambda l: l.snr_db)[:5]:
                lines.append(f"    {layer.name:<32} SNR {layer.snr_db:6.1f} dB  cosine {layer.cosine:.4f}")
        if self.first_divergence:
            lines.append(f"  first layer below {self.divergence_snr_db:g} dB SNR: {self.first_divergence}")
        elif self.layers:
            lines.append(f"  every matched layer stays above {self.divergence_snr_db:g} dB SNR")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (infinite SNR written as null)."""

        def clean(value):
            if isinstance(value, float) and not math.isfinite(value):
                return None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [clean(v) for v in value]
            return value

        return clean(dataclasses.asdict(self))


# --- runners --------------------------------------------------------------------------------------


class _KerasRunner:
    def __init__(self, model: Any):
        self.model = model
        self.kind = f"Keras model {model.name!r} ({_keras.keras_flavor(model)})"
        self.output_names = list(getattr(model, "output_names", None) or [])

    def outputs(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        feed = xs[0] if len(xs) == 1 else xs
        result = self.model.predict(feed, batch_size=256, verbose=0)
        flat = list(result.values()) if isinstance(result, dict) else result
        flat = flat if isinstance(flat, (list, tuple)) else [flat]
        return [np.asarray(a, np.float32) for a in flat]

    def layer_outputs(self, xs: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Output of every single-output layer of a functional model, keyed by (normalised) layer name."""
        keras = _keras.keras_of(self.model)
        layers = [l for l in self.model.layers if type(l).__name__ != "InputLayer"]
        picked = []
        for layer in layers:
            try:
                output = layer.output
            except (AttributeError, ValueError, RuntimeError):
                continue
            if isinstance(output, (list, tuple, dict)):
                continue
            picked.append((layer, output))
        if not picked:
            return {}
        try:
            probe = keras.Model(self.model.inputs, [o for _, o in picked])
        except (ValueError, TypeError, AttributeError):
            return {}
        values = probe.predict(xs[0] if len(xs) == 1 else xs, batch_size=64, verbose=0)
        values = values if isinstance(values, (list, tuple)) else [values]
        return {_plain_layer_name(l.name): np.asarray(v, np.float32) for (l, _), v in zip(picked, values)}

    def layer_order(self) -> list[str]:
        return [_plain_layer_name(l.name) for l in self.model.layers]


class _TFLiteRunner:
    def __init__(self, tflite: Any, *, preserve: bool = False):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        self.content = tflite_bytes(tflite)
        self.kind = f"TFLite ({len(self.content) / 1024:.1f} KB)"
        self.interpreter = Interpreter(model_content=self.content, experimental_preserve_all_tensors=preserve)
        try:
            self.interpreter.allocate_tensors()
        except RuntimeError:
            # XNNPACK refuses some graphs (seen on LiteRT Quantizer models with float ops kept);
            # the built-in kernels compute the same thing.
            self.interpreter = Interpreter(
                model_content=self.content,
                experimental_preserve_all_tensors=preserve,
                experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            )
            self.interpreter.allocate_tensors()
            self.kind += ", XNNPACK refused it: built-in kernels"
        self.inputs = self.interpreter.get_input_details()
        self.output_details = self.interpreter.get_output_details()
        self.output_names = _signature_output_names(self.interpreter, self.output_details)

    def _run_one(self, example: list[np.ndarray]) -> None:
        for detail, array in zip(self.inputs, example):
            self.interpreter.set_tensor(detail["index"], _quantize(array.reshape(detail["shape"]), detail))
        self.interpreter.invoke()

    def outputs(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        order = _match_inputs(self.inputs, len(xs))
        batch = int(self.inputs[0]["shape"][0]) or 1
        if batch != 1:
            raise InvalidArgumentError(f"compare() runs .tflite models one example at a time; this one has batch {batch}.")
        results: list[list[np.ndarray]] = [[] for _ in self.output_details]
        for i in range(len(xs[0])):
            self._run_one([xs[j][i : i + 1] for j in order])
            for k, detail in enumerate(self.output_details):
                results[k].append(_dequantize(self.interpreter.get_tensor(detail["index"]), detail)[0])
        return [np.stack(r) for r in results]

    def op_outputs(self, xs: list[np.ndarray]) -> list[tuple[str, np.ndarray]]:
        """(tensor name, outputs over examples) for each op output, in execution order."""
        from ai_edge_litert.tools import flatbuffer_utils

        model = flatbuffer_utils.read_model_from_bytearray(bytearray(self.content))
        graph = model.subgraphs[0]
        details = {d["index"]: d for d in self.interpreter.get_tensor_details()}
        order = _match_inputs(self.inputs, len(xs))
        ids = [int(t) for op in graph.operators for t in (op.outputs if op.outputs is not None else [])]
        collected: dict[int, list[np.ndarray]] = {i: [] for i in ids if i in details}
        for i in range(len(xs[0])):
            self._run_one([xs[j][i : i + 1] for j in order])
            for index in collected:
                try:
                    value = self.interpreter.get_tensor(index)
                except ValueError:
                    continue
                collected[index].append(_dequantize(value, details[index])[0] if value.ndim else value)
        return [
            (details[i]["name"], np.stack(v))
            for i, v in collected.items()
            if v and len(v) == len(xs[0]) and v[0].dtype.kind == "f"
        ]


def _signature_output_names(interpreter, details) -> list[str]:
    signatures = interpreter.get_signature_list()
    if len(signatures) != 1:
        return [d["name"] for d in details]
    runner_outputs = next(iter(signatures.values())).get("outputs", [])
    by_index = {}
    key = next(iter(signatures))
    for name, detail in interpreter.get_signature_runner(key).get_output_details().items():
        by_index[detail["index"]] = name
    names = [by_index.get(d["index"], d["name"]) for d in details]
    return names if len(set(names)) == len(names) else list(runner_outputs)


def _match_inputs(details, count: int) -> list[int]:
    if count != len(details):
        raise InvalidArgumentError(f"the .tflite has {len(details)} inputs but the data holds {count} arrays.")
    return list(range(count))


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    dtype = detail["dtype"]
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if np.issubdtype(dtype, np.integer) and scale:
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)
    return x.astype(dtype)


def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if np.issubdtype(y.dtype, np.integer) and scale:
        return (y.astype(np.float32) - zero_point) * scale
    return y.astype(np.float32) if y.dtype.kind == "f" else y


def _runner(model: Any, label: str, *, preserve: bool = False):
    if _keras.is_keras_model(model):
        return _KerasRunner(model)
    if isinstance(model, (bytes, bytearray, memoryview, str)) or hasattr(model, "tflite") or hasattr(model, "__fspath__"):
        return _TFLiteRunner(model, preserve=preserve)
    raise InvalidTypeError(
        f"{label} must be a Keras model (Keras 3, tf_keras or a QAT model) or a .tflite (bytes, path or "
        f"ConversionResult). Received: an object of type {type(model).__name__}."
    )


# --- layer name matching --------------------------------------------------------------------------

_QAT_PREFIX = "quant_"


def _plain_layer_name(name: str) -> str:
    return name[len(_QAT_PREFIX):] if name.startswith(_QAT_PREFIX) else name


def _layers_in_tensor_name(tensor_name: str, known: set[str]) -> set[str]:
    """Keras layer names mentioned in a TFLite tensor name such as 'model_1/relu1_1/Relu;model_1/conv1_1/conv'."""
    found = set()
    for segment in tensor_name.split(";"):
        for part in segment.split("/"):
            for candidate in (part, re.sub(r"_\d+$", "", part)):
                plain = _plain_layer_name(candidate)
                if plain in known:
                    found.add(plain)
                    break
    return found


# --- compare --------------------------------------------------------------------------------------


def _split_data(data: Any) -> tuple[list[np.ndarray], np.ndarray | None]:
    y = None
    if isinstance(data, tuple) and len(data) == 2 and not isinstance(data[0], (int, float)):
        data, y = data
    if isinstance(data, dict):
        xs = [np.asarray(v) for v in data.values()]
    elif isinstance(data, (list, tuple)):
        xs = [np.asarray(v) for v in data]
    else:
        xs = [np.asarray(data)]
    if not xs or any(a.dtype.kind not in "biuf" for a in xs):
        raise InvalidTypeError(
            "compare() data must be numeric arrays: x, a list of arrays (one per input), or (x, y). "
            f"Received dtypes {[str(a.dtype) for a in xs]}."
        )
    n = len(xs[0])
    if n == 0 or any(len(a) != n for a in xs):
        raise InvalidArgumentError(f"compare() data must hold the same non-zero number of examples per input; got {[len(a) for a in xs]}.")
    if y is not None:
        y = np.asarray(y)
        if len(y) != n:
            raise InvalidArgumentError(f"data x holds {n} examples but y holds {len(y)} labels; they must match.")
        if y.ndim > 1 and y.shape[-1] > 1:
            y = np.argmax(y, axis=-1)
        y = y.reshape(-1)
    return [a.astype(np.float32) if a.dtype.kind == "f" else a for a in xs], y


def compare(
    reference: Any,
    candidate: Any,
    data: Any,
    *,
    max_examples: int | None = 1000,
    localize: bool = True,
    num_localize_examples: int = 16,
    divergence_snr_db: float = 20.0,
) -> ParityResult:
    """Checks that `candidate` computes what `reference` computes, on the same real inputs.

    Use it after quantizing: between the float Keras model and its .tflite, a
    QAT model and its int8 .tflite, or two .tflite files. Reports top-1
    agreement (does the quantized model pick the same class?), absolute errors,
    SNR and cosine per output, and - when intermediate tensors can be matched by
    name - the SNR of each layer and the first layer that falls below
    `divergence_snr_db`, which is where to look (or what to keep in float).

    Args:
        reference: a Keras model (Keras 3, tf_keras, or a QAT model) or a .tflite
            (bytes, path or `ConversionResult`).
        candidate: the same kinds.
        data: inputs: an array, a list of arrays (one per model input, in input
            order), or `(x, y)` to also report both accuracies.
        max_examples: use at most this many examples. Defaults to `1000`.
        localize: measure intermediate layers too. Defaults to `True`.
        num_localize_examples: examples used for the per-layer measurement.
            Defaults to `16`.
        divergence_snr_db: a layer whose SNR is below this diverges. Defaults to `20.0`.

    Returns:
        A `ParityResult`; print `.summary()`.

    Raises:
        TypeError: a model of an unsupported kind, or non-numeric data.
        ValueError: data that does not fit, or outputs of different shapes.

    Example:

    >>> import keras, numpy as np, tfopt
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> x = np.random.rand(20, 8).astype("float32")
    >>> result = tfopt.compare(model, tfopt.convert(model), x)
    >>> result.top1_agreement
    1.0
    """
    if max_examples is not None and (isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1):
        raise InvalidArgumentError(f"max_examples must be a positive integer or None. Received: max_examples={max_examples!r}.")
    xs, y = _split_data(data)
    if max_examples is not None:
        xs, y = [a[:max_examples] for a in xs], (y[:max_examples] if y is not None else None)
    ref, cand = _runner(reference, "reference"), _runner(candidate, "candidate")
    ref_out, cand_out = ref.outputs(xs), cand.outputs(xs)
    if len(ref_out) != len(cand_out):
        raise InvalidArgumentError(f"reference has {len(ref_out)} outputs and candidate {len(cand_out)}; compare needs the same outputs.")
    cand_out = _align_outputs(ref.output_names, cand.output_names, cand_out)
    outputs, notes = [], []
    for k, (a, b) in enumerate(zip(ref_out, cand_out)):
        if a.size != b.size:
            raise InvalidArgumentError(f"output {k} has shape {a.shape[1:]} in the reference and {b.shape[1:]} in the candidate.")
        b = b.reshape(a.shape)
        name = ref.output_names[k] if k < len(ref.output_names) else f"output_{k}"
        agreement = top1_agreement(a, b) if a.reshape(len(a), -1).shape[1] > 1 else None
        diff = np.abs(a - b)
        outputs.append(OutputParity(name, float(diff.max()), float(diff.mean()), snr_db(a, b), cosine_similarity(a, b), agreement))
    accuracies = (None, None)
    if y is not None and outputs[0].top1_agreement is not None:
        accuracies = tuple(float(np.mean(np.argmax(o.reshape(len(o), -1), -1) == y)) for o in (ref_out[0], cand_out[0].reshape(ref_out[0].shape)))
    layers: tuple[LayerParity, ...] = ()
    if localize:
        sample = [a[:num_localize_examples] for a in xs]
        layers, note = _localize(ref, cand, reference, candidate, sample)
        if note:
            notes.append(note)
    first = next((l.name for l in layers if l.snr_db < divergence_snr_db), None)
    return ParityResult(
        reference=ref.kind,
        candidate=cand.kind,
        num_examples=len(xs[0]),
        top1_agreement=outputs[0].top1_agreement,
        max_abs_error=max(o.max_abs_error for o in outputs),
        mean_abs_error=float(np.mean([o.mean_abs_error for o in outputs])),
        outputs=tuple(outputs),
        layers=layers,
        first_divergence=first,
        divergence_snr_db=float(divergence_snr_db),
        reference_accuracy=accuracies[0],
        candidate_accuracy=accuracies[1],
        notes=tuple(notes),
    )


def _align_outputs(ref_names: list[str], cand_names: list[str], cand_out: list[np.ndarray]) -> list[np.ndarray]:
    if len(cand_out) > 1 and set(ref_names) == set(cand_names) and len(set(ref_names)) == len(ref_names):
        by_name = dict(zip(cand_names, cand_out))
        return [by_name[n] for n in ref_names]
    return cand_out


def _localize(ref, cand, reference, candidate, xs) -> tuple[tuple[LayerParity, ...], str | None]:
    """Per-layer SNR where intermediate tensors can be matched; in reference (execution) order."""
    keras_side = [r for r in (ref, cand) if isinstance(r, _KerasRunner)]
    if len(keras_side) == 2:
        a, b = ref.layer_outputs(xs), cand.layer_outputs(xs)
        order = [n for n in ref.layer_order() if n in a and n in b]
        pairs = [(n, n, a[n], b[n]) for n in order]
    elif len(keras_side) == 1:
        keras_runner = keras_side[0]
        tfl = _TFLiteRunner(candidate if keras_runner is ref else reference, preserve=True)
        values = keras_runner.layer_outputs(xs)
        order = keras_runner.layer_order()
        known = set(values)
        rank = {n: i for i, n in enumerate(order)}
        matched: dict[str, tuple[str, np.ndarray]] = {}
        model_outputs = {d["name"] for d in tfl.output_details}
        single_output = len(model_outputs) == 1 and order and order[-1] in known
        for name, tensor in tfl.op_outputs(xs):
            hits = _layers_in_tensor_name(name, known)
            if not hits and single_output and name in model_outputs:
                hits = {order[-1]}  # the output tensor is named after the signature, not the layer
            if hits:
                layer = max(hits, key=lambda n: rank.get(n, -1))
                matched[layer] = (name, tensor)  # the last op writing a layer's output wins
        pairs = []
        for layer in order:
            if layer in matched:
                tensor_name, tensor = matched[layer]
                k_val = values[layer]
                pair = (k_val, tensor) if keras_runner is ref else (tensor, k_val)
                pairs.append((layer, tensor_name, *pair))
    else:
        a_ops = _TFLiteRunner(reference, preserve=True).op_outputs(xs)
        b_ops = dict(_TFLiteRunner(candidate, preserve=True).op_outputs(xs))
        pairs = [(n, n, v, b_ops[n]) for n, v in a_ops if n in b_ops]
    layers = []
    for name, cand_name, a, b in pairs:
        if a.size != b.size:
            continue
        b = b.reshape(a.shape)
        layers.append(LayerParity(name, cand_name, snr_db(a, b), cosine_similarity(a, b), float(np.max(np.abs(a - b)))))
    note = None if layers else "no intermediate tensors could be matched by name; only outputs were compared"
    return tuple(layers), note
