"""The handler of `LayerPrecisionConfig`: quantize each layer at its precision with LiteRT Quantizer, and check it.

`apply_layer_precision` is what `tfopt.convert(..., layer_precision=...)` calls.
With rules it writes the map they give; with `auto=True` it measures, on
validation data, each layer alone at 4 bits (its output noise, accuracy,
flatbuffer bytes and XNNPACK latency), orders the layers by bytes saved per unit
of output noise, and keeps the longest prefix that meets the bounds, leaving out
layers whose 4-bit kernel would cost more latency than allowed. When even the
uniform model misses `max_accuracy_drop`, the layers that add the most error are
raised to float16 first. Every result is checked on LiteRT: the precision each
op really has in the flatbuffer and whether XNNPACK runs it.

What LiteRT runs (measured by `bench/bench_precision.py`): int4 weights with int8
activations on FULLY_CONNECTED run on XNNPACK at int8 speed; int4 CONV_2D runs
on LiteRT's reference kernels; LiteRT Quantizer refuses int4 depthwise
convolutions; int16 activations leave XNNPACK; float16 / float32 layers between
int8 ones stay on XNNPACK.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Sequence

import numpy as np

from tfopt.analyze.flatbuffer import inspect_tflite
from tfopt.errors import InvalidArgumentError
from tfopt.export import _litert
from tfopt.export.precision import LayerPrecisionConfig

# Op types each precision can be written for by LiteRT Quantizer (checked again in the result).
WRITABLE = {
    "int4": ("CONV_2D", "FULLY_CONNECTED"),
    "int8": ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"),
    "int16x8": ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"),
    "float16": ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"),
    "float32": ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"),
}
# inspect_tflite precision -> layer precision.
_WRITTEN = {"int4": "int4", "int8": "int8", "int16x8": "int16x8", "int16x4": "int16x4",
            "float16-weights": "float16", "float32": "float32"}
_LAYER_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


class InfeasibleBoundError(InvalidArgumentError):
    """No layer map meets the bounds of `layer_precision="auto"`; `.nearest` holds the closest one measured."""

    def __init__(self, message: str, nearest: dict[str, Any]):
        super().__init__(message)
        self.nearest = nearest


@dataclasses.dataclass(frozen=True)
class LayerOps:
    """A Keras layer with weights and the ops of the float .tflite that compute it."""

    name: str
    scopes: tuple[str, ...]  # op scopes (output tensor names joined by ';', plus ';')
    op_types: tuple[str, ...]
    num_weights: int
    outputs: tuple[tuple[str, ...], ...] = ()  # each op's output tensor names

    def regexes(self) -> list[str]:
        return [f"^{re.escape(scope)}$" for scope in self.scopes]


def _kernel_size(layer: Any) -> int:
    return int(sum(int(np.prod(w.shape)) for w in layer.weights if len(w.shape) >= 2))


def layer_ops(keras_model: Any, float_content: bytes) -> list[LayerOps]:
    """The Keras layers with a kernel, each with its compute ops in the float .tflite (execution order).

    An op belongs to a layer when a segment of its output tensor names is the
    layer's name (Keras 3 adds `_1` to each scope when exporting); the model's
    single output op belongs to its last layer.
    """
    layers = [layer for layer in _all_layers(keras_model) if _kernel_size(layer) > 0]
    names = {layer.name for layer in layers}
    inspection = inspect_tflite(float_content)
    outputs = _litert.op_outputs(float_content)
    output_tensor = inspection.outputs[0].name if len(inspection.outputs) == 1 else None
    last = keras_model.layers[-1].name if len(getattr(keras_model, "outputs", [])) == 1 else None
    found: dict[str, list[tuple[str, str]]] = {}
    for op in inspection.ops:
        if op.subgraph != 0 or op.name not in _LAYER_OPS or op.index >= len(outputs):
            continue
        outs = outputs[op.index]
        segments = {seg for name in outs for part in name.split(";") for seg in part.split("/")}
        owner = None
        suffixed = [n for n in names if f"{n}_1" in segments]
        exact = [n for n in names if n in segments]
        for group in (suffixed, exact):
            if group:
                owner = max(group, key=len)
                break
        if owner is None and output_tensor in outs and last in names:
            owner = last
        if owner is not None:
            found.setdefault(owner, []).append((_litert.op_scope(outs), op.name, tuple(outs)))
    by_name = {layer.name: layer for layer in layers}
    order = [n for n in (layer.name for layer in layers) if n in found]
    return [LayerOps(n, tuple(s for s, _, _ in found[n]), tuple(t for _, t, _ in found[n]), _kernel_size(by_name[n]),
                     tuple(o for _, _, o in found[n])) for n in order]


def _all_layers(model: Any) -> list[Any]:
    out = []
    for layer in model.layers:
        inner = getattr(layer, "layers", None)
        out.extend(_all_layers(layer) if inner else [layer])
    return out


def writable(precision: str, op_types: Sequence[str]) -> bool:
    """True when LiteRT Quantizer writes `precision` for every op type of a layer."""
    return all(t in WRITABLE[precision] for t in op_types)


def overrides_for(layers: Sequence[LayerOps], layer_map: dict[str, str], default: str) -> list[tuple[str, str]]:
    """(op scope regex, precision) pairs for the layers whose precision differs from `default`."""
    by_name = {layer.name: layer for layer in layers}
    pairs = []
    for name, precision in layer_map.items():
        if precision != default and name in by_name:
            pairs.extend((regex, precision) for regex in by_name[name].regexes())
    return pairs


@dataclasses.dataclass
class _Quantizer:
    """Quantizes the float .tflite for a layer map, calibrating once (activation ranges do not depend on it)."""

    float_content: bytes
    layers: list[LayerOps]
    default: str
    calibration: Any
    per_channel_dense: bool = True
    calibration_method: str = "minmax"
    qsv: dict | None = None

    def __call__(self, layer_map: dict[str, str]) -> bytes:
        content, self.qsv = _litert.run_litert_layers(
            self.float_content, default=self.default, overrides=overrides_for(self.layers, layer_map, self.default),
            calibration=self.calibration, qsv=self.qsv, calibration_method=self.calibration_method,
            per_channel_dense=self.per_channel_dense,
        )
        return content


def check_layers(content: bytes, layers: Sequence[LayerOps], layer_map: dict[str, str], default: str,
                 coverage: Any = None) -> tuple[dict[str, dict], list[str]]:
    """Per layer: the precision asked for, the one written in the flatbuffer, and whether XNNPACK runs it.

    Returns ({layer: {"requested", "written", "xnnpack"}}, warnings).
    """
    inspection = inspect_tflite(content)
    outputs = _litert.op_outputs(content)
    by_tensor: dict[str, Any] = {}
    for op in inspection.ops:
        if op.subgraph == 0 and op.name in _LAYER_OPS and op.index < len(outputs):
            for name in outputs[op.index]:
                by_tensor[name] = op
    undelegated = set(coverage.undelegated) if coverage is not None else None
    report: dict[str, dict] = {}
    warnings: list[str] = []
    for layer in layers:
        requested = layer_map.get(layer.name, default)
        written, on_xnnpack = [], []
        for outs in layer.outputs:
            op = next((by_tensor[n] for n in outs if n in by_tensor), None)
            if op is None:
                continue
            written.append(_WRITTEN.get(op.precision, op.precision))
            if undelegated is not None:
                on_xnnpack.append(f"{op.name}#{op.index}" not in undelegated)
        written_name = written[0] if len(set(written)) == 1 else "/".join(written) or "unknown"
        delegated = None if undelegated is None or not on_xnnpack else all(on_xnnpack)
        report[layer.name] = {"requested": requested, "written": written_name, "xnnpack": delegated,
                              "weights": layer.num_weights, "ops": list(layer.op_types)}
        if written_name != requested:
            warnings.append(
                f"layer {layer.name!r} ({'/'.join(layer.op_types)}) was asked for {requested} but LiteRT Quantizer "
                f"wrote {written_name}: it cannot write {requested} for that op."
            )
        elif delegated is False:
            warnings.append(
                f"layer {layer.name!r} at {requested} ({'/'.join(layer.op_types)}) runs on LiteRT's reference "
                "kernels, not XNNPACK: it can be much slower than at int8."
            )
    return report, warnings


# --- measuring --------------------------------------------------------------------------------------------------


def _outputs(content: bytes, x: Any) -> np.ndarray:
    from tfopt.measure.evaluate import predict_tflite

    xs = list(x) if isinstance(x, (list, tuple)) else [x]
    return np.asarray(predict_tflite(content, xs)["predictions"][0], np.float64)


def _latency(content: bytes, num_runs: int) -> float:
    from tfopt.measure.benchmark import benchmark

    result = benchmark(content, num_runs=num_runs, warmup_runs=3, num_threads=1)
    return float(result.latency_ms_median)


@dataclasses.dataclass
class _Trial:
    layer_map: dict[str, str]
    size_bytes: int
    accuracy: float
    noise: float  # output noise power over signal power, against the float .tflite
    latency_ms: float | None = None
    content: bytes | None = dataclasses.field(default=None, repr=False)
    error: str | None = None  # LiteRT could not load or run the model

    def row(self, reference: float) -> dict[str, Any]:
        return {"size_bytes": self.size_bytes, "accuracy": self.accuracy, "error": self.error,
                "drop_points": round(100 * (reference - self.accuracy), 4),
                "output_snr_db": _snr(self.noise), "latency_ms": self.latency_ms,
                "layer_map": dict(self.layer_map)}


def _snr(noise: float) -> float | None:
    return None if noise <= 0 else round(-10 * math.log10(noise), 3)


class _Measure:
    """Builds and scores layer maps on the validation data (never the calibration data)."""

    def __init__(self, quantize: _Quantizer, validation: tuple[Any, Any], num_runs: int):
        x, y = validation
        self.quantize, self.x, self.num_runs = quantize, x, num_runs
        self.y = np.asarray(y)
        if self.y.ndim > 1:
            self.y = self.y.argmax(-1)
        self.y = self.y.reshape(-1)
        self.reference_out = _outputs(quantize.float_content, x)
        self.signal = float(np.sum(self.reference_out**2)) or 1.0
        self.reference_accuracy = self._accuracy(self.reference_out)
        self.count = 0

    def _accuracy(self, out: np.ndarray) -> float:
        return float(np.mean(out.reshape(len(out), -1).argmax(-1) == self.y))

    def __call__(self, layer_map: dict[str, str], *, latency: bool = False, keep: bool = False) -> _Trial:
        from tfopt.errors import BenchmarkError

        content = self.quantize(layer_map)
        self.count += 1
        try:
            out = _outputs(content, self.x)
        except BenchmarkError as err:  # e.g. an int4 CONV_2D whose scales overflow LiteRT's integer check
            return _Trial(dict(layer_map), len(content), 0.0, math.inf, math.inf, content if keep else None,
                          error=str(err).splitlines()[0][:200])
        noise = float(np.sum((out - self.reference_out) ** 2)) / self.signal
        trial = _Trial(dict(layer_map), len(content), self._accuracy(out), noise)
        if latency:
            trial.latency_ms = _latency(content, self.num_runs)
        if keep:
            trial.content = content
        return trial


def _drop_ok(trial: _Trial, measure: _Measure, config: LayerPrecisionConfig) -> bool:
    if trial.error is not None:
        return False
    if config.max_accuracy_drop is None:
        return True
    return 100 * (measure.reference_accuracy - trial.accuracy) <= config.max_accuracy_drop + 1e-9


def _size_ok(trial: _Trial, config: LayerPrecisionConfig) -> bool:
    if trial.error is not None:
        return False
    return config.max_size_kb is None or trial.size_bytes <= config.max_size_kb * 1024


def auto_layer_map(
    measure: _Measure,
    layers: Sequence[LayerOps],
    fixed: dict[str, str],
    config: LayerPrecisionConfig,
) -> tuple[dict[str, str], dict[str, Any], bytes]:
    """Chooses a layer map meeting the config's bounds; returns (map, a record of the search, its flatbuffer).

    The chosen map is built and measured once more (accuracy, bytes, latency on
    LiteRT) before it is returned; a map that misses a bound is refused.
    """
    default = config.default
    base = measure(dict(fixed), latency=True, keep=True)
    record: dict[str, Any] = {
        "validation": f"{len(measure.y)} labelled examples passed as validation (not the calibration data)",
        "float_accuracy": measure.reference_accuracy, "uniform": base.row(measure.reference_accuracy),
        "max_accuracy_drop": config.max_accuracy_drop, "max_size_kb": config.max_size_kb,
        "max_latency_ratio": config.max_latency_ratio, "layers": {}, "upgraded": [], "steps": [],
    }
    free = [layer for layer in layers if layer.name not in fixed]
    current = dict(fixed)
    anchor = base
    # 1. Raise the layers that add the most error until the uniform model meets max_accuracy_drop.
    raise_to = next((p for p in ("float16", "float32") if p in config.candidates), None)
    if not _drop_ok(base, measure, config) and raise_to is not None:
        anchor = _upgrade(measure, free, current, anchor, raise_to, config, record)
    # 2. Each free layer alone at 4 bits: bytes saved, noise added, latency added.
    budget = None if config.max_latency_ratio is None else base.latency_ms * (config.max_latency_ratio - 1.0)
    scored = []
    if "int4" in config.candidates:
        for layer in free:
            if current.get(layer.name, default) != default or not writable("int4", layer.op_types):
                continue
            trial = measure({**current, layer.name: "int4"}, latency=budget is not None)
            if trial.error is not None:
                record["layers"][layer.name] = {"ops": list(layer.op_types), "weights": layer.num_weights,
                                                "skipped": f"LiteRT cannot run it at int4: {trial.error}"}
                continue
            saved = anchor.size_bytes - trial.size_bytes
            added_noise = max(trial.noise - anchor.noise, 0.0)
            added_ms = None if trial.latency_ms is None else trial.latency_ms - anchor.latency_ms
            record["layers"][layer.name] = {
                "ops": list(layer.op_types), "weights": layer.num_weights, "bytes_saved": saved,
                "output_snr_db": _snr(trial.noise), "drop_points": round(100 * (anchor.accuracy - trial.accuracy), 4),
                "latency_added_ms": None if added_ms is None else round(added_ms, 4),
            }
            if saved > 0:
                scored.append((layer.name, saved, added_noise, added_ms))
    # 3. Greedy order: bytes saved per unit of cost, the cost being the layer's share of the noise all candidates
    # add plus its share of the latency budget; layers are taken while the latency budget lasts.
    total_noise = sum(noise for _, _, noise, _ in scored) or 1.0
    ranked = sorted(
        scored,
        key=lambda item: -item[1] / (item[2] / total_noise + (max(item[3] or 0.0, 0.0) / budget if budget else 0.0)
                                     + 1e-6),
    )
    order, spent = [], 0.0
    for name, saved, _, added_ms in ranked:
        # Signed: a layer XNNPACK runs at int4 adds only timing noise, which averages out over many layers
        # (clamping each to >= 0 would sum the noise); the whole is timed again at the end.
        cost = added_ms or 0.0
        if budget is not None and spent + max(cost, 0.0) > budget:
            record["layers"][name]["skipped"] = "its 4-bit kernel would exceed the latency budget"
            continue
        spent += cost
        order.append(name)
    record["order"] = order

    def build(k: int) -> _Trial:
        trial = measure({**current, **{n: "int4" for n in order[:k]}})
        record["steps"].append({"int4_layers": k, **{key: trial.row(measure.reference_accuracy)[key]
                                                      for key in ("size_bytes", "drop_points", "output_snr_db")}})
        return trial

    # 4. The prefix: the longest meeting max_accuracy_drop, the shortest meeting max_size_kb.
    trials: dict[int, _Trial] = {0: anchor}

    def trial(k: int) -> _Trial:
        if k not in trials:
            trials[k] = build(k)
        return trials[k]

    best = 0
    if config.max_size_kb is not None:  # the shortest prefix within the size: the least accuracy spent
        best = next((k for k in range(len(order) + 1) if _size_ok(trial(k), config)), None)
        if best is None or not _drop_ok(trial(best), measure, config):
            _refuse(measure, config, trials, record, order, current)
    elif config.max_accuracy_drop is not None:  # the longest prefix within the drop: the fewest bytes
        if not _drop_ok(anchor, measure, config):
            _refuse(measure, config, trials, record, order, current)
        lo, hi = 0, len(order)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if _drop_ok(trial(mid), measure, config):
                lo = mid
            else:
                hi = mid - 1
        best = lo
    chosen = {**current, **{n: "int4" for n in order[:best]}}
    final = measure(chosen, latency=True, keep=True)
    # Latencies measured one layer at a time (the rest int8) need not add up. When the drop allowed every layer
    # taken, try the layers left out for latency too, as a whole: kept if the whole meets every bound.
    left_out = [n for n, info in record["layers"].items() if "latency budget" in info.get("skipped", "")]
    if config.max_size_kb is None and best == len(order) and left_out:
        wider = measure({**chosen, **{n: "int4" for n in left_out}}, latency=True, keep=True)
        record["steps"].append({"int4_layers": best + len(left_out), "with_latency_left_out": True,
                                **{key: wider.row(measure.reference_accuracy)[key]
                                   for key in ("size_bytes", "drop_points", "output_snr_db", "latency_ms")}})
        fast_enough = config.max_latency_ratio is None or wider.latency_ms <= final.latency_ms or (
            wider.latency_ms <= base.latency_ms * config.max_latency_ratio)
        if _drop_ok(wider, measure, config) and fast_enough and wider.size_bytes < final.size_bytes:
            for n in left_out:
                record["layers"][n]["skipped"] = ""
                record["layers"][n].pop("skipped")
            order = order + left_out
            best = len(order)
            chosen, final = dict(wider.layer_map), wider
    base.latency_ms = min(base.latency_ms, _latency(base.content, measure.num_runs))  # timed again, next to it
    # 5. The latencies added one layer at a time need not add up: check the whole, and give back the 4-bit layers
    # that cost the most time while the model is over the latency bound (and the size bound allows it).
    repairs = 0
    while (config.max_latency_ratio is not None and final.latency_ms > base.latency_ms * config.max_latency_ratio
           and repairs < 4):
        slow = [n for n in order[:best] if chosen.get(n) == "int4"]
        slow.sort(key=lambda n: -(record["layers"][n].get("latency_added_ms") or 0.0))
        if not slow:
            break
        candidate_map = {k: v for k, v in chosen.items() if k != slow[0]}
        candidate = measure(candidate_map, latency=True, keep=True)
        repairs += 1
        if not _size_ok(candidate, config):
            break
        record["layers"][slow[0]]["skipped"] = "given back: the whole model was over the latency bound"
        chosen, final = candidate_map, candidate
    record["latency_repairs"] = repairs
    record["order"] = order
    record["chosen_int4_layers"] = sum(1 for n in order if chosen.get(n) == "int4")
    record["uniform"] = base.row(measure.reference_accuracy)
    record["final"] = final.row(measure.reference_accuracy)
    record["latency_ratio"] = (round(final.latency_ms / base.latency_ms, 4)
                               if final.latency_ms and base.latency_ms else None)
    record["size_ratio"] = round(final.size_bytes / base.size_bytes, 4)
    record["measurements"] = measure.count
    if not (_drop_ok(final, measure, config) and _size_ok(final, config)):
        _refuse(measure, config, {**trials, -1: final}, record, order, current)
    return chosen, record, final.content


def _upgrade(measure, free, current, anchor, raise_to, config, record, max_steps: int = 8):
    """Raises the most error-adding layers of the uniform model to `raise_to` until within max_accuracy_drop."""
    gains = []
    for layer in free:
        if not writable(raise_to, layer.op_types):
            continue
        trial = measure({**current, layer.name: raise_to})
        gains.append((anchor.noise - trial.noise, layer.name))
    gains.sort(reverse=True)
    for gain, name in gains[:max_steps]:
        if gain <= 0:
            break
        current[name] = raise_to
        anchor = measure(dict(current), latency=True)
        record["upgraded"].append({"layer": name, "precision": raise_to, **anchor.row(measure.reference_accuracy)})
        if _drop_ok(anchor, measure, config):
            break
    if anchor.latency_ms is None:
        anchor.latency_ms = _latency(measure.quantize(dict(current)), measure.num_runs)
    return anchor


def _refuse(measure, config, trials, record, order, current):
    """Raises InfeasibleBoundError naming the measured map closest to the bounds."""
    reference = measure.reference_accuracy

    def excess(trial):
        drop = 100 * (reference - trial.accuracy)
        over_drop = max(0.0, drop - config.max_accuracy_drop) if config.max_accuracy_drop is not None else 0.0
        over_size = max(0.0, trial.size_bytes / 1024 - config.max_size_kb) if config.max_size_kb is not None else 0.0
        return over_drop + over_size

    nearest = min(trials.values(), key=excess)
    row = nearest.row(reference)
    changed = {k: v for k, v in nearest.layer_map.items()}
    bounds = ", ".join(f"{k}={v}" for k, v in (("max_accuracy_drop", config.max_accuracy_drop),
                                                 ("max_size_kb", config.max_size_kb)) if v is not None)
    raise InfeasibleBoundError(
        f"layer_precision='auto' cannot meet {bounds}: the nearest layer map measured gives "
        f"{row['size_bytes'] / 1024:.1f} KB at a drop of {row['drop_points']:.2f} points (float "
        f"{100 * reference:.2f}%), with {changed or 'every layer at ' + config.default}. Loosen a bound, or "
        "train the model with quantization-aware training first.",
        nearest={**row, "record": record},
    )


# --- the handler ------------------------------------------------------------------------------------------------


def apply_layer_precision(
    config: LayerPrecisionConfig,
    *,
    float_content: bytes,
    keras_model: Any,
    calibration: Any,
    validation: tuple[Any, Any] | None,
    per_channel_dense: bool = True,
    calibration_method: str = "minmax",
    num_runs: int = 30,
) -> tuple[bytes, dict[str, Any]]:
    """Quantizes the float .tflite with the config's layer map; returns (flatbuffer, record without XNNPACK check).

    The record holds `"map"` (layer -> precision, every layer with weights),
    `"config"` (the config as given) and, for `auto`, `"search"`.
    """
    if keras_model is None:
        raise InvalidArgumentError(
            "layer_precision maps Keras layers to precisions, so it needs the Keras model (or a .keras / .h5 file), "
            "not a .tflite or SavedModel."
        )
    if calibration is None:
        raise InvalidArgumentError(
            "layer_precision quantizes activations and needs calibration data: "
            "calibration=tfopt.calibration_data(x_train, model=model)."
        )
    layers = layer_ops(keras_model, float_content)
    if not layers:
        raise InvalidArgumentError("layer_precision found no Conv2D / DepthwiseConv2D / Dense layer in the model.")
    fixed = config.resolve([layer.name for layer in layers])
    quantize = _Quantizer(float_content, list(layers), config.default, calibration, per_channel_dense,
                          calibration_method)
    search = None
    if config.auto:
        if validation is None:
            raise InvalidArgumentError(
                "layer_precision='auto' chooses precisions on labelled validation data the model was not trained "
                "on: pass validation=(x_val, y_val)."
            )
        measure = _Measure(quantize, validation, num_runs)
        layer_map, search, content = auto_layer_map(measure, layers, fixed, config)
    else:
        layer_map = fixed
        content = quantize(layer_map)
    full = {layer.name: layer_map.get(layer.name, config.default) for layer in layers}
    return content, {"config": config.to_dict(), "map": full, "search": search, "layers": layers}
