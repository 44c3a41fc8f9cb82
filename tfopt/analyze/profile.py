"""Where the cost of a model sits: parameters, MACs, FLOPs and memory, per layer.

`profile` reads a Keras model (Keras 3 or tf_keras; functional, Sequential, and
nested models, which are expanded layer by layer) or a `.tflite` flatbuffer
(float or int8), and applies the formulas of `tfopt.analyze.flops` to every layer
or operator. Layers it has no formula for are listed in `unknown_layers` and
count no MACs; nothing is guessed.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from tfopt.analyze import flops as F
from tfopt.analyze.cost_graph import _Graph, _Node, _tflite_graph
from tfopt.errors import InvalidArgumentError, MissingFileError, UnsupportedModelError

__all__ = ["profile", "Profile", "LayerProfile"]

_STORAGE = ("float32", "float16", "int8")


@dataclasses.dataclass(frozen=True)
class LayerProfile:
    """Cost of one layer (Keras) or operator (TFLite).

    Attributes:
        name: layer name (`outer/inner` inside nested models) or output tensor name (TFLite).
        kind: layer class name or TFLite operator name.
        params: number of weights this layer holds (0 when they are shared with an earlier node).
        macs: multiply-accumulates, or `None` when no formula is known.
        flops: `2 * macs`, or `None`.
        other_ops: non-MAC arithmetic (pooling, elementwise, normalisation), one per element touched.
        output_shapes: output shapes, batch included.
        output_bytes: bytes of the outputs at the activation dtype.
        weight_bytes: bytes of the weights stored as float32 / float16 / int8 (TFLite adds `stored`).
    """

    name: str
    kind: str
    params: int
    macs: int | None
    flops: int | None
    other_ops: int
    output_shapes: tuple[tuple[int, ...], ...]
    output_bytes: int
    weight_bytes: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["output_shapes"] = [list(shape) for shape in self.output_shapes]
        return out


@dataclasses.dataclass(frozen=True)
class Profile:
    """Totals and per-layer costs of a model; see `profile`.

    Attributes:
        name: model name or file name.
        source: `"keras"` or `"tflite"`.
        batch_size: the batch the activations, MACs and memory are counted for.
        layers: one `LayerProfile` per layer or operator, in execution order.
        params: total parameters (`trainable_params` of them trainable). For a .tflite: the
            elements of every constant tensor, which adds a few int32 shape operands and
            loses nothing but folded BatchNormalization statistics.
        macs / flops: totals over the layers with a known formula.
        other_ops: total non-MAC arithmetic.
        weight_bytes: weights stored as float32 / float16 / int8 (and `stored` for a .tflite).
        activation_bytes: sum of every activation tensor (model inputs and all layer outputs).
        peak_activation_bytes: largest total of activations alive at once during inference,
            from tensor lifetimes over the graph (no in-place reuse assumed).
        peak_layer: the layer running when that peak is reached.
        training_bytes: estimated training memory (Keras only): every activation kept for the
            backward pass + an activation gradient of the same size (upper bound) + float32
            weights + their gradients + `optimizer_slots` float32 slots per trainable weight.
        training_breakdown: the terms of `training_bytes`.
        unknown_layers: layers with no MAC formula (their MACs are not in the totals).
    """

    name: str
    source: str
    batch_size: int
    layers: tuple[LayerProfile, ...]
    params: int
    trainable_params: int
    macs: int
    flops: int
    other_ops: int
    weight_bytes: dict[str, int]
    activation_bytes: int
    peak_activation_bytes: int
    peak_layer: str
    training_bytes: int | None
    training_breakdown: dict[str, int]
    unknown_layers: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: totals (`params`, `macs`, `flops`, ...) and a `layers` list."""
        out = dataclasses.asdict(self)
        out["layers"] = [layer.to_dict() for layer in self.layers]
        out["unknown_layers"] = list(self.unknown_layers)
        return out

    def summary(self, *, max_rows: int = 60) -> str:
        """A text table: one row per layer (the costliest `max_rows` when longer), then totals."""
        rows = list(self.layers)
        hidden = 0
        if len(rows) > max_rows:
            keep = set(sorted(range(len(rows)), key=lambda i: -(rows[i].macs or 0))[:max_rows])
            hidden = len(rows) - max_rows
            rows = [row for i, row in enumerate(rows) if i in keep]
        name_w = min(40, max([len("layer")] + [len(r.name) for r in rows]))
        kind_w = min(24, max([len("type")] + [len(r.kind) for r in rows]))
        header = f"{'layer':<{name_w}}  {'type':<{kind_w}}  {'output shape':<22} {'params':>11} {'MACs':>14} {'output':>10}"
        lines = [f"Profile of {self.name} ({self.source}, batch {self.batch_size})", header, "-" * len(header)]
        for r in rows:
            shape = " ".join(str(list(s)) for s in r.output_shapes)
            macs = "?" if r.macs is None else f"{r.macs:,}"
            lines.append(
                f"{r.name[:name_w]:<{name_w}}  {r.kind[:kind_w]:<{kind_w}}  {shape[:22]:<22} "
                f"{r.params:>11,} {macs:>14} {_human(r.output_bytes):>10}"
            )
        if hidden:
            lines.append(f"... {hidden} cheaper layers not shown (all are in to_dict()['layers'])")
        lines.append("-" * len(header))
        w = self.weight_bytes
        lines += [
            f"params: {self.params:,}" + (f" ({self.trainable_params:,} trainable)" if self.source == "keras" else ""),
            f"MACs: {self.macs:,} ({self.macs / 1e6:,.1f} M)   FLOPs: {self.flops:,}   other ops: {self.other_ops:,}",
            "weights: " + "  ".join(f"{k} {_human(w[k])}" for k in w),
            f"activations: total {_human(self.activation_bytes)}, inference peak "
            f"{_human(self.peak_activation_bytes)} (at {self.peak_layer})",
        ]
        if self.training_bytes is not None:
            parts = ", ".join(f"{k} {_human(v)}" for k, v in self.training_breakdown.items())
            lines.append(f"training memory (estimate): {_human(self.training_bytes)} = {parts}")
        if self.unknown_layers:
            shown = ", ".join(self.unknown_layers[:8]) + (" ..." if len(self.unknown_layers) > 8 else "")
            lines.append(f"unknown layers (MACs not counted): {len(self.unknown_layers)}: {shown}")
        return "\n".join(lines)


def _human(num: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(num) < 1024 or unit == "GiB":
            return f"{num:.0f} {unit}" if unit == "B" else f"{num:.2f} {unit}"
        num /= 1024
    return f"{num:.2f} GiB"


def profile(model_or_tflite: Any, *, batch_size: int = 1, optimizer_slots: int = 2) -> Profile:
    """Counts parameters, MACs, FLOPs and memory of a model, per layer and in total.

    Use it to see where a model's cost sits before choosing what to compress, and to
    compare a model before and after a transform. It reads the model's structure only:
    nothing runs, so it is fast even for large models and large batches.

    Args:
        model_or_tflite: a Keras model (Keras 3 or tf_keras; functional or Sequential,
            nested models are expanded), or a TFLite flatbuffer: `bytes`, a path to a
            `.tflite` file, or the result of `tfopt.convert`.
        batch_size: examples per batch for MACs, activations and memory. For a .tflite
            the counts of the converted batch are scaled linearly. Defaults to `1`.
        optimizer_slots: float32 slots per trainable weight in the training-memory
            estimate (Adam 2, SGD with momentum 1, plain SGD 0). Defaults to `2`.

    Returns:
        A `Profile` with `summary()` (a table) and `to_dict()` (JSON-ready).

    Raises:
        TypeError: if the input is neither a Keras model nor flatbuffer bytes / a path.
        ValueError: if `batch_size` < 1, a model input has an unknown (None) dimension
            other than the batch, or the file is not a flatbuffer.
        NotImplementedError: for subclassed models (profile their .tflite instead).

    Example:

    >>> import keras, tfopt
    >>> model = keras.Sequential([keras.Input((25, 25, 9)), keras.layers.Conv2D(64, 7)])
    >>> report = tfopt.profile(model)
    >>> report.macs, report.flops
    (10188864, 20377728)
    >>> print(report.summary())  # doctest: +SKIP
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be a positive integer. Received: batch_size={batch_size!r}.")
    if isinstance(optimizer_slots, bool) or not isinstance(optimizer_slots, int) or optimizer_slots < 0:
        raise InvalidArgumentError(f"optimizer_slots must be an integer >= 0. Received: optimizer_slots={optimizer_slots!r}.")
    flat = getattr(model_or_tflite, "tflite", None)  # a tfopt.convert result
    if isinstance(flat, (bytes, bytearray)):
        graph = _tflite_graph(bytes(flat), batch_size=batch_size, name="model.tflite")
    elif isinstance(model_or_tflite, (bytes, bytearray, memoryview)):
        graph = _tflite_graph(bytes(model_or_tflite), batch_size=batch_size, name="model.tflite")
    elif isinstance(model_or_tflite, (str, os.PathLike)):
        path = os.fspath(model_or_tflite)
        if not path.endswith(".tflite"):
            raise InvalidArgumentError(
                f"Expected a .tflite path (or a Keras model object). Received: {path!r}. "
                "Load a .keras/.h5 file first (tfopt._keras.load_model) and pass the model."
            )
        if not os.path.isfile(path):
            raise MissingFileError(f"TFLite file not found: {path!r}.")
        with open(path, "rb") as handle:
            graph = _tflite_graph(handle.read(), batch_size=batch_size, name=os.path.basename(path))
    else:
        graph = _keras_graph(model_or_tflite, batch_size=batch_size)
    return _assemble(graph, batch_size=batch_size, optimizer_slots=optimizer_slots)


def _assemble(graph, *, batch_size: int, optimizer_slots: int) -> Profile:
    """Turns a cost graph (nodes with tensors, costs and weights) into a Profile."""
    layers, unknown = [], []
    for node in graph.nodes:
        out_bytes = int(sum(graph.tensor_bytes.get(t, 0) for t in node.outputs))
        weights = {dtype: int(F.weight_bytes(node.params, dtype)) for dtype in _STORAGE}
        if node.stored_bytes is not None:
            weights["stored"] = int(node.stored_bytes)
        layers.append(
            LayerProfile(
                name=node.name, kind=node.kind, params=int(node.params), macs=node.macs,
                flops=None if node.macs is None else 2 * node.macs, other_ops=int(node.other_ops),
                output_shapes=tuple(tuple(graph.tensor_shapes.get(t) or ()) for t in node.outputs),
                output_bytes=out_bytes, weight_bytes=weights,
            )
        )
        if node.macs is None:
            unknown.append(f"{node.name} ({node.kind})")
    # Tensor lifetimes: produced at its node's step (inputs: step 0), alive until its last reader.
    steps = len(graph.nodes)
    first, last = {t: 0 for t in graph.input_ids}, {}
    for step, node in enumerate(graph.nodes):
        for t in node.outputs:
            first.setdefault(t, step)
        for t in node.inputs:
            last[t] = step
    for t in graph.output_ids:
        last[t] = steps - 1
    tensors = [t for t in first if t in graph.tensor_bytes]
    peak, at = F.peak_live_bytes(
        [graph.tensor_bytes[t] for t in tensors], [first[t] for t in tensors],
        [last.get(t, first[t]) for t in tensors], steps,
    )
    activation_total = int(sum(graph.tensor_bytes[t] for t in tensors))
    params = sum(node.params for node in graph.nodes)
    trainable = graph.trainable_params if graph.trainable_params is not None else params  # 0 for TFLite
    totals = {dtype: int(F.weight_bytes(params, dtype)) for dtype in _STORAGE}
    if graph.source == "tflite":
        totals["stored"] = int(sum(node.stored_bytes or 0 for node in graph.nodes))
        training, breakdown = None, {}
    else:
        breakdown = {
            "activations": activation_total,
            "activation_gradients": activation_total,
            "weights": int(F.weight_bytes(params)),
            "weight_gradients": int(F.weight_bytes(trainable)),
            "optimizer_slots": int(F.weight_bytes(trainable)) * optimizer_slots,
        }
        training = sum(breakdown.values())
    macs = sum(node.macs or 0 for node in graph.nodes)
    return Profile(
        name=graph.name, source=graph.source, batch_size=batch_size, layers=tuple(layers),
        params=int(params), trainable_params=int(trainable), macs=int(macs), flops=int(2 * macs),
        other_ops=int(sum(node.other_ops for node in graph.nodes)), weight_bytes=totals,
        activation_bytes=activation_total, peak_activation_bytes=int(peak),
        peak_layer=graph.nodes[at].name if graph.nodes else "", training_bytes=training,
        training_breakdown=breakdown, unknown_layers=tuple(unknown),
    )


def _walk_refs(obj, *, keras3: bool):
    """Yields `((layer, node, tensor), shape_or_None, dtype_or_None)` for tensor references in a node config."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            cfg = obj["config"]
            yield tuple(cfg["keras_history"]), cfg.get("shape"), cfg.get("dtype")
            return
        for value in obj.values():
            yield from _walk_refs(value, keras3=keras3)
    elif isinstance(obj, (list, tuple)):
        is_ref = (
            len(obj) in (3, 4) and isinstance(obj[0], str) and isinstance(obj[1], int)
            and isinstance(obj[2], int) and (len(obj) == 3 or isinstance(obj[3], dict))
        )
        if is_ref and not keras3:
            yield (obj[0], obj[1], obj[2]), None, None
            if len(obj) == 4:
                yield from _walk_refs(obj[3], keras3=keras3)
            return
        for value in obj:
            yield from _walk_refs(value, keras3=keras3)


def _batched(shape, batch_size: int):
    if shape is None:
        return None
    shape = tuple(shape)
    if shape and shape[0] is None:
        shape = (batch_size,) + shape[1:]
    if any(dim is None or dim < 0 for dim in shape):
        return None
    return tuple(int(d) for d in shape)


def _as_shape_list(result) -> list:
    """compute_output_shape results: one shape (tuple of ints/None) or a list of shapes."""
    if isinstance(result, dict):
        result = list(result.values())
    if isinstance(result, (list, tuple)) and result and all(isinstance(r, (list, tuple)) or r is None for r in result) \
            and not all(r is None for r in result):
        return [tuple(r) if r is not None else None for r in result]
    return [tuple(result)]


class _KerasGraphBuilder:
    """Expands a Keras model (and nested models) into one flat list of cost nodes."""

    def __init__(self, batch_size: int):
        from tfopt import _keras

        self._keras = _keras
        self.batch_size = batch_size
        self.graph: _Graph | None = None
        self.alias: dict[str, str] = {}
        self.seen_layers: set[int] = set()
        self.produced: set[str] = set()

    def resolve(self, tid: str) -> str:
        while tid in self.alias:
            tid = self.alias[tid]
        return tid

    def set_tensor(self, tid: str, shape, dtype) -> None:
        shape = _batched(shape, self.batch_size)
        if shape is None:
            return
        self.graph.tensor_shapes[tid] = shape
        name = str(dtype or "float32")
        self.graph.tensor_bytes[tid] = int(F.num_elements(shape) * F.DTYPE_BYTES.get(name, 4))

    def build(self, model) -> _Graph:
        flavor = self._keras.keras_flavor(model)
        self.graph = _Graph(name=model.name, source="keras")
        self._check_graph(model)
        try:
            inputs = list(model.inputs)
        except (AttributeError, ValueError):
            inputs = []
        if not inputs:
            raise InvalidArgumentError(
                f"Model {model.name!r} has no defined inputs. Build it with keras.Input(...) "
                "(or call model.build(input_shape)) before profiling."
            )
        for tensor in inputs:
            if any(dim is None for dim in tuple(tensor.shape)[1:]):
                raise InvalidArgumentError(
                    f"Model input {tensor.name!r} has shape {tuple(tensor.shape)} with an unknown dimension. "
                    "Profiling needs fixed sizes: rebuild the model with e.g. keras.Input((224, 224, 3))."
                )
        ids = [f"input:{i}" for i in range(len(inputs))]
        for tid, tensor in zip(ids, inputs):
            self.set_tensor(tid, tensor.shape, getattr(tensor, "dtype", "float32"))
        self.graph.input_ids = ids
        self.produced.update(ids)
        self.graph.output_ids = [self.resolve(t) for t in self.expand(model, "", ids, flavor)]
        self.graph.trainable_params = int(sum(np.prod(w.shape) for w in model.trainable_weights))
        return self.graph

    @staticmethod
    def _check_graph(model) -> dict:
        """The model's config when it describes a layer graph (Sequential or functional)."""
        try:
            config = model.get_config()
        except NotImplementedError:
            config = None
        layers_cfg = config.get("layers") if isinstance(config, dict) else None
        sequential = type(model).__name__ == "Sequential" and isinstance(layers_cfg, list)
        if not sequential and (not isinstance(layers_cfg, list)
                               or not all("inbound_nodes" in entry for entry in layers_cfg)):
            raise UnsupportedModelError(
                f"Cannot read the layer graph of {model.name!r} ({type(model).__name__}): subclassed models "
                "have no functional graph. Convert it to .tflite (tfopt.convert) and profile the flatbuffer, "
                "or build it with the functional API."
            )
        return config

    def expand(self, model, prefix: str, input_ids: list[str], flavor: str) -> list[str]:
        config = self._check_graph(model)
        if type(model).__name__ == "Sequential":
            return self._expand_chain(model, prefix, input_ids)
        return self._expand_functional(model, config, prefix, input_ids, flavor)

    def _expand_chain(self, model, prefix, input_ids):
        current = input_ids[0]
        for index, layer in enumerate(model.layers):
            if type(layer).__name__ == "InputLayer":
                continue
            out_id = f"{prefix}{layer.name}:0:0"
            if self._keras.is_keras_model(layer):
                inner = self.expand(layer, f"{prefix}{layer.name}/", [current], self._keras.keras_flavor(layer))
                self.alias[out_id] = inner[0]
            else:
                self._add_layer_node(layer, prefix, [current], [out_id], ref_shapes={}, single_node=True)
            current = self.resolve(out_id)
        return [current]

    def _expand_functional(self, model, config, prefix, input_ids, flavor):
        keras3 = flavor == self._keras.KERAS3
        by_name = {op.name: op for op in (getattr(model, "operations", None) or model.layers)}
        entries = []  # (layer, config node index, [refs])
        ref_shapes: dict[tuple, tuple] = {}
        max_ref: dict[str, int] = {}
        for entry in config["layers"]:
            for j, node_cfg in enumerate(entry["inbound_nodes"]):
                refs = []
                for ref, shape, dtype in _walk_refs(node_cfg, keras3=keras3):
                    refs.append(ref)
                    max_ref[ref[0]] = max(max_ref.get(ref[0], 0), ref[1])
                    if shape is not None:
                        ref_shapes[ref] = (shape, dtype)
                entries.append((entry["name"], j, refs))
        outputs = [ref for ref, _, _ in _walk_refs(config["output_layers"], keras3=False)]
        inputs = [ref for ref, _, _ in _walk_refs(config["input_layers"], keras3=False)]
        for ref in outputs:
            max_ref[ref[0]] = max(max_ref.get(ref[0], 0), ref[1])
        counts = {entry["name"]: len(entry["inbound_nodes"]) for entry in config["layers"]}
        offset = {name: max(0, top - max(counts.get(name, 1) - 1, 0)) for name, top in max_ref.items()}

        def tid(ref) -> str:
            name, node, tensor = ref
            return f"{prefix}{name}:{node - offset.get(name, 0)}:{tensor}"

        # Shapes seen by consumers, keyed by the producer's tensor id.
        shapes_by_id = {tid(ref): value for ref, value in ref_shapes.items()}
        for ref, given in zip(inputs, input_ids):
            self.alias[tid(ref)] = given
        pending = [e for e in entries if type(by_name.get(e[0])).__name__ != "InputLayer"]
        while pending:
            for k, (name, j, refs) in enumerate(pending):
                in_ids = [self.resolve(tid(ref)) for ref in refs]
                if all(t in self.produced for t in in_ids):
                    break
            else:
                raise InvalidArgumentError(f"Could not order the layers of {model.name!r}: a layer input is never produced.")
            pending.pop(k)
            layer = by_name[name]
            if self._keras.is_keras_model(layer):
                inner = self.expand(layer, f"{prefix}{name}/", in_ids, self._keras.keras_flavor(layer))
                for t, inner_id in enumerate(inner):
                    self.alias[f"{prefix}{name}:{j}:{t}"] = inner_id
                continue
            out_ids = [f"{prefix}{name}:{j}:{t}" for t in range(8)]
            self._add_layer_node(layer, prefix, in_ids, out_ids, ref_shapes=shapes_by_id,
                                 single_node=counts.get(name, 1) == 1)
        return [self.resolve(tid(ref)) for ref in outputs]

    def _add_layer_node(self, layer, prefix, in_ids, out_ids, *, ref_shapes, single_node):
        kind = type(layer).__name__
        cost_kind = kind
        layer_config = {}
        try:
            layer_config = layer.get_config()
        except (NotImplementedError, TypeError, AttributeError):
            pass
        if kind == "TFOpLambda":
            function = str(layer_config.get("function", ""))
            cost_kind = F.TF_FUNCTION_KINDS.get(function.split(".")[-1], kind)
            kind = f"TFOpLambda({function})"
        in_shapes = [self.graph.tensor_shapes.get(t) for t in in_ids]
        out_shapes = self._output_shapes(layer, in_shapes, out_ids, ref_shapes, single_node)
        dtype = getattr(layer, "compute_dtype", None) or "float32"
        outputs = []
        for t, shape in zip(out_ids, out_shapes):
            self.set_tensor(t, shape, ref_shapes.get(t, (None, dtype))[1] or dtype)
            outputs.append(t)
        self.produced.update(outputs)
        params = 0
        weights = list(getattr(layer, "weights", None) or [])
        if id(layer) not in self.seen_layers:
            self.seen_layers.add(id(layer))
            params = int(sum(np.prod(w.shape) for w in weights))
        kernel = tuple(weights[0].shape) if weights else None
        batched_out = [self.graph.tensor_shapes.get(t) for t in outputs]
        try:
            macs, other = F.keras_layer_cost(cost_kind, layer_config, in_shapes, batched_out, kernel)
        except (KeyError, ValueError, TypeError, IndexError):
            macs, other = None, 0
        self.graph.nodes.append(_Node(name=f"{prefix}{layer.name}", kind=kind, inputs=list(in_ids),
                                      outputs=outputs, params=params, macs=macs, other_ops=other))

    def _output_shapes(self, layer, in_shapes, out_ids, ref_shapes, single_node) -> list:
        unbatched = [None if s is None else (None,) + tuple(s[1:]) for s in in_shapes]
        computed: list = []
        try:
            arg = unbatched[0] if len(unbatched) == 1 else unbatched
            computed = _as_shape_list(layer.compute_output_shape(arg))
        except Exception:  # noqa: BLE001 - any layer may refuse; other sources follow
            computed = []
        if not computed and single_node:
            try:
                out = layer.output
                computed = [tuple(t.shape) for t in (out if isinstance(out, (list, tuple)) else [out])]
            except (AttributeError, ValueError, RuntimeError):
                computed = []
        known = [t for t in out_ids if t in ref_shapes]
        count = max(len(computed), (max(out_ids.index(t) for t in known) + 1) if known else 0)
        return [ref_shapes[t][0] if t in ref_shapes else (computed[i] if i < len(computed) else None)
                for t, i in zip(out_ids[:count], range(count))]


def _keras_graph(model, *, batch_size: int) -> _Graph:
    return _KerasGraphBuilder(batch_size).build(model)
