"""Parity check: does a quantized model (QAT Keras model or .tflite) behave like its reference?

`compare(reference, candidate, data)` runs both on the same real inputs and
reports top-1 agreement, max / mean absolute error, and per-output SNR and
cosine similarity. Either side may be a Keras model (Keras 3, tf_keras, or a
tfmot QAT model) or a .tflite (bytes, path or `ConversionResult`). When it can
match intermediate tensors - by layer name between Keras models and .tflite
tensor names, or by tensor name between two .tflite files - it also measures
each layer and names the first one whose SNR falls below a threshold.

.tflite files run on LiteRT (XNNPACK on) in the measurement worker, a child
process (`tfopt.measure._worker`), never in the caller's; accuracies come from
the one evaluation path (`tfopt.measure.evaluate`).
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
from tfopt.measure._worker import run_task
from tfopt.measure.evaluate import predict_keras, predict_tflite, score, split_data
from tfopt.measure.metrics import get_metric, top_k_accuracy

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
    return top_k_accuracy(np.argmax(a, axis=-1), np.asarray(candidate).reshape(len(candidate), -1))


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


def _feed(xs: Any) -> Any:
    return xs if isinstance(xs, dict) else (xs[0] if len(xs) == 1 else xs)


def _head(xs: Any, n: int) -> Any:
    return {k: v[:n] for k, v in xs.items()} if isinstance(xs, dict) else [a[:n] for a in xs]


def _arrays(xs: Any) -> list[np.ndarray]:
    return list(xs.values()) if isinstance(xs, dict) else list(xs)


class _KerasRunner:
    def __init__(self, model: Any):
        self.model = model
        self.kind = f"Keras model {model.name!r} ({_keras.keras_flavor(model)})"
        self.output_names = list(getattr(model, "output_names", None) or [])

    def outputs(self, xs: Any) -> list[np.ndarray]:
        outputs, _ = predict_keras(self.model, xs, batch_size=256)
        return [np.asarray(a, np.float32) for a in outputs]

    def layer_outputs(self, xs: Any) -> dict[str, np.ndarray]:
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
        values = probe.predict(_feed(xs), batch_size=64, verbose=0)
        values = values if isinstance(values, (list, tuple)) else [values]
        return {_plain_layer_name(l.name): np.asarray(v, np.float32) for (l, _), v in zip(picked, values)}

    def layer_order(self) -> list[str]:
        return [_plain_layer_name(l.name) for l in self.model.layers]


class _TFLiteRunner:
    """A .tflite seen from the caller: every run happens on LiteRT in the measurement worker (a child process).

    `inputs` / `output_details` are plain dicts (name, shape, dtype, scale, zero_point).
    `preserve` is accepted for compatibility; per-op outputs always keep their tensors.
    """

    def __init__(self, tflite: Any, *, preserve: bool = False, timeout: float = 600.0):  # noqa: ARG002
        self.content = tflite_bytes(tflite)
        self.timeout = timeout
        info = run_task("describe", {"content": self.content}, timeout=timeout)
        self.kind = f"TFLite ({len(self.content) / 1024:.1f} KB)"
        if any("XNNPACK refused" in note for note in info["notes"]):
            self.kind += ", XNNPACK refused it: built-in kernels"
        self.inputs = info["inputs"]
        self.output_details = info["outputs"]
        self.output_names = info["output_names"]

    def outputs(self, xs: Any) -> list[np.ndarray]:
        """Every output on every example, dequantized to float32."""
        raw = predict_tflite(self.content, xs, batch_size=1, timeout=self.timeout)
        return [np.asarray(a, np.float32) for a in raw["predictions"]]

    def op_outputs(self, xs: Any) -> list[tuple[str, np.ndarray]]:
        """(tensor name, outputs over examples) for each op output, in execution order."""
        request = {"content": self.content, "xs": _arrays(xs)}
        return run_task("op_outputs", request, timeout=self.timeout)["op_outputs"]


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
    xs, y = split_data(data, max_examples=max_examples, label="compare()")
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
        labels = y[0] if isinstance(y, (list, tuple)) else y
        top1 = get_metric("top1")
        accuracies = tuple(score(top1, [o], labels, ["output_0"])[0] for o in (ref_out[0], cand_out[0].reshape(ref_out[0].shape)))
    layers: tuple[LayerParity, ...] = ()
    if localize:
        sample = _head(xs, num_localize_examples)
        layers, note = _localize(ref, cand, reference, candidate, sample)
        if note:
            notes.append(note)
    first = next((l.name for l in layers if l.snr_db < divergence_snr_db), None)
    return ParityResult(
        reference=ref.kind,
        candidate=cand.kind,
        num_examples=len(_arrays(xs)[0]),
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
