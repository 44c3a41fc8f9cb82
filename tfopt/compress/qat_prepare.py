"""The QAT preparer: rewrites what tfmot refuses into a graph it can quantize.

tfmot's `quantize_apply` stops on TFOpLambda ops (`x + 3.0` in hard-swish, `x * y`
in squeeze-excite blocks), on models used as layers, and on subclassed models.
`prepare` works on the tf_keras functional config (public `get_config` /
`from_config` only) and returns an equivalent flat functional model:

- Sequential models become functional; nested models are inlined (flattened);
- TFOpLambda ops are replaced by built-in layers: `+`/`-`/`*`/`/` by a constant
  -> `Rescaling`, `+`/`*` of two tensors -> `Add` / `Multiply`, relu / relu6 ->
  `ReLU`, sigmoid / swish -> `Activation`, spatial `reduce_mean` ->
  `GlobalAveragePooling2D`; any other op stays as it is and is listed;
- `trace_subclassed` turns a subclassed model whose `call` only calls layers
  into a functional graph over those same layers.

The weights are copied, and the caller's model is never touched.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import numpy as np

from tfopt import _keras
from tfopt.errors import InvalidArgumentError, InvalidTypeError, UnsupportedModelError

_MODEL_CLASSES = ("Functional", "Model", "Sequential")


@dataclasses.dataclass(frozen=True)
class Preparation:
    """A model tfmot can quantize, and what was rewritten or left alone to get it."""

    model: Any
    rewrites: tuple[str, ...]
    untouched_ops: tuple[str, ...]


# --- config helpers ---------------------------------------------------------------------------


def _is_ref(value: Any) -> bool:
    return isinstance(value, list) and len(value) >= 3 and isinstance(value[0], str) and isinstance(value[1], int)


def _node_entries(node: Any) -> list[list]:
    """A node in tf_keras's config: a list of [name, node, tensor, kwargs] entries, or one flat entry."""
    return [node] if node and isinstance(node[0], str) else list(node)


def _sequential_to_functional(config: dict, name: str) -> dict:
    layers = list(config["layers"])
    out_layers, previous = [], None
    first = layers[0] if layers else None
    if first is None or first["class_name"] != "InputLayer":
        shape = (first or {}).get("config", {}).get("batch_input_shape")
        if shape is None:
            raise UnsupportedModelError(f"Sequential model {name!r} has no input shape; build it with keras.Input first.")
        layers = [{"class_name": "InputLayer", "config": {"batch_input_shape": shape, "name": f"{name}_input"}}] + layers
    for layer in layers:
        entry = {"class_name": layer["class_name"], "config": layer["config"], "name": layer["config"]["name"]}
        entry["inbound_nodes"] = [] if previous is None else [[[previous, 0, 0, {}]]]
        previous = entry["name"]
        out_layers.append(entry)
    return {
        "name": name,
        "layers": out_layers,
        "input_layers": [[out_layers[0]["name"], 0, 0]],
        "output_layers": [[previous, 0, 0]],
    }


def _functional_config(model_cls: str, config: dict, name: str) -> dict:
    if model_cls == "Sequential":
        return _sequential_to_functional(config, name)
    return copy.deepcopy(config)


def _flatten(config: dict, sources: dict[str, Any], rewrites: list[str]) -> dict:
    """Inlines nested models; `sources` maps each layer name to the layer object holding its weights."""
    layers_out: list[dict] = []
    replaced: dict[tuple[str, int], list] = {}  # (nested name, tensor index) -> ref to inner output
    taken = {layer["name"] for layer in config["layers"]}
    for layer in config["layers"]:
        if layer["class_name"] not in _MODEL_CLASSES:
            layers_out.append(layer)
            continue
        nodes = layer.get("inbound_nodes") or []
        if len(nodes) != 1:
            layers_out.append(layer)  # a nested model called several times: left nested
            continue
        nested = sources[layer["name"]]
        inner_sources = {l.name: l for l in nested.layers}
        inner = _flatten(_functional_config(layer["class_name"], layer["config"], layer["name"]), inner_sources, rewrites)
        renames = {}
        for inner_layer in inner["layers"]:
            new = inner_layer["name"]
            if new in taken and inner_layer["class_name"] != "InputLayer":
                new = f"{layer['name']}_{new}"
            renames[inner_layer["name"]] = new
        outer_inputs = _node_entries(nodes[0])
        input_map = {ref[0]: outer_inputs[i] for i, ref in enumerate(inner["input_layers"])}
        for inner_layer in inner["layers"]:
            if inner_layer["class_name"] == "InputLayer":
                continue
            item = copy.deepcopy(inner_layer)
            item["name"] = renames[inner_layer["name"]]
            item["config"]["name"] = item["name"]
            item["inbound_nodes"] = _remap_nodes(item["inbound_nodes"], input_map, renames)
            layers_out.append(item)
            taken.add(item["name"])
            sources[item["name"]] = inner_sources.get(inner_layer["name"], inner_sources.get(item["name"]))
        for t, ref in enumerate(inner["output_layers"]):
            replaced[(layer["name"], t)] = [renames.get(ref[0], ref[0]), ref[1], ref[2]]
        rewrites.append(f"nested model {layer['name']!r} inlined ({len(inner['layers'])} layers)")
    if replaced:
        for layer in layers_out:
            layer["inbound_nodes"] = _replace_refs(layer.get("inbound_nodes", []), replaced)
        config["output_layers"] = [_swap(ref, replaced) for ref in config["output_layers"]]
    config["layers"] = layers_out
    return config


def _swap(ref: list, replaced: dict) -> list:
    hit = replaced.get((ref[0], ref[2]))
    return list(hit) + list(ref[3:]) if hit is not None else ref


def _replace_refs(value: Any, replaced: dict) -> Any:
    if _is_ref(value):
        return _swap(value, replaced)
    if isinstance(value, list):
        return [_replace_refs(v, replaced) for v in value]
    if isinstance(value, dict):
        return {k: _replace_refs(v, replaced) for k, v in value.items()}
    return value


def _remap_nodes(value: Any, input_map: dict, renames: dict) -> Any:
    if _is_ref(value):
        if value[0] in input_map:
            source = input_map[value[0]]
            return [source[0], source[1], source[2]] + list(value[3:])
        return [renames.get(value[0], value[0])] + list(value[1:])
    if isinstance(value, list):
        return [_remap_nodes(v, input_map, renames) for v in value]
    if isinstance(value, dict):
        return {k: _remap_nodes(v, input_map, renames) for k, v in value.items()}
    return value


# --- TFOpLambda -> built-in layers -----------------------------------------------------------

_ADD = ("__operators__.add", "math.add")
_MUL = ("math.multiply", "__operators__.mul")
_SUB = ("math.subtract", "__operators__.sub")
_DIV = ("math.truediv", "__operators__.truediv", "math.divide")
_ACTIVATIONS = {"nn.relu": ("ReLU", {}), "nn.relu6": ("ReLU", {"max_value": 6.0}), "math.sigmoid": ("Activation", {"activation": "sigmoid"}),
                "nn.sigmoid": ("Activation", {"activation": "sigmoid"}), "nn.silu": ("Activation", {"activation": "swish"}),
                "nn.swish": ("Activation", {"activation": "swish"}), "math.tanh": ("Activation", {"activation": "tanh"})}


def _rewrite_op(layer: dict) -> dict | None:
    """A built-in layer equivalent to a TFOpLambda entry, or None."""
    function = layer["config"].get("function", "")
    nodes = layer.get("inbound_nodes") or []
    if len(nodes) != 1:
        return None
    entries = _node_entries(nodes[0])
    if len(entries) != 1:
        return None
    entry = entries[0]
    source, kwargs = entry[:3], dict(entry[3]) if len(entry) > 3 else {}
    kwargs.pop("name", None)
    name = layer["name"].replace(".", "_")

    def make(class_name: str, config: dict, inbound: list) -> dict:
        return {"class_name": class_name, "name": name, "config": {"name": name, "trainable": True, **config}, "inbound_nodes": [inbound]}

    if function in _ACTIVATIONS and not kwargs:
        class_name, config = _ACTIVATIONS[function]
        return make(class_name, config, [source + [{}]])
    if set(kwargs) != {"y"}:
        if function == "math.reduce_mean" and set(kwargs) <= {"axis", "keepdims"} and list(kwargs.get("axis") or []) in ([1, 2], [-3, -2]):
            return make("GlobalAveragePooling2D", {"keepdims": bool(kwargs.get("keepdims", False))}, [source + [{}]])
        return None
    y = kwargs["y"]
    if isinstance(y, (int, float)) and not isinstance(y, bool):
        y = float(y)
        scale, offset = {**{f: (1.0, y) for f in _ADD}, **{f: (y, 0.0) for f in _MUL}, **{f: (1.0, -y) for f in _SUB},
                         **{f: (1.0 / y if y else None, 0.0) for f in _DIV}}.get(function, (None, None))
        if scale is None:
            return None
        return make("Rescaling", {"scale": scale, "offset": offset}, [source + [{}]])
    if _is_ref(y) and function in _ADD + _MUL:
        return make("Add" if function in _ADD else "Multiply", {}, [source + [{}], list(y[:3]) + [{}]])
    return None


def _rewrite_ops(config: dict, rewrites: list[str], untouched: list[str]) -> dict:
    renames: dict[tuple[str, int], list] = {}
    layers = []
    for layer in config["layers"]:
        if layer["class_name"] != "TFOpLambda":
            layers.append(layer)
            continue
        new = _rewrite_op(layer)
        if new is None:
            untouched.append(f"{layer['name']} ({layer['config'].get('function')})")
            layers.append(layer)
            continue
        rewrites.append(f"{layer['name']} ({layer['config'].get('function')}) -> {new['class_name']}")
        renames[(layer["name"], 0)] = [new["name"], 0, 0]
        layers.append(new)
    if renames:
        for layer in layers:
            layer["inbound_nodes"] = _replace_refs(layer.get("inbound_nodes", []), renames)
        config["output_layers"] = [_swap(ref, renames) for ref in config["output_layers"]]
    config["layers"] = layers
    return config


# --- Keras 3 symbolic ops (x + 3.0 on a KerasTensor) -> layers, before the tf_keras bridge ------

_K3_SCALAR = {"Add": lambda c: (1.0, c), "Subtract": lambda c: (1.0, -c), "Multiply": lambda c: (c, 0.0),
              "Divide": lambda c: (1.0 / c if c else None, 0.0), "TrueDivide": lambda c: (1.0 / c if c else None, 0.0)}


def _k3_op_layer(layer: dict) -> dict | None:
    if not str(layer.get("module", "")).startswith("keras.src.ops") or len(layer.get("inbound_nodes") or []) != 1:
        return None
    node = layer["inbound_nodes"][0]
    args = node.get("args", [])
    if node.get("kwargs") or len(args) != 2:
        return None
    tensors = [a for a in args if isinstance(a, dict) and a.get("class_name") == "__keras_tensor__"]
    scalars = [a for a in args if isinstance(a, (int, float)) and not isinstance(a, bool)]
    base = {"module": "keras.layers", "registered_name": None, "name": layer["name"]}
    if len(tensors) == 1 and len(scalars) == 1 and layer["class_name"] in _K3_SCALAR:
        if layer["class_name"] in ("Subtract", "Divide", "TrueDivide") and not isinstance(args[0], dict):
            return None  # c - x, c / x: not a scale and offset
        scale, offset = _K3_SCALAR[layer["class_name"]](float(scalars[0]))
        if scale is None:
            return None
        return {**base, "class_name": "Rescaling", "config": {"name": layer["name"], "scale": scale, "offset": offset},
                "inbound_nodes": [{"args": [tensors[0]], "kwargs": {}}]}
    if len(tensors) == 2 and layer["class_name"] in ("Add", "Multiply"):
        return {**base, "class_name": layer["class_name"], "config": {"name": layer["name"]},
                "inbound_nodes": [{"args": [tensors], "kwargs": {}}]}
    return None


def _k3_hard_activation(layer: dict) -> list[dict] | None:
    """Keras 3 hard_sigmoid = relu6(x + 3) / 6 and hard_silu = x * hard_sigmoid(x), as built-in layers
    (tf_keras lacks hard_silu, and its hard_sigmoid is a different function)."""
    activation = layer.get("config", {}).get("activation")
    if layer.get("class_name") != "Activation" or activation not in ("hard_sigmoid", "hard_silu", "hard_swish"):
        return None
    nodes = layer.get("inbound_nodes") or []
    if len(nodes) != 1 or len(nodes[0].get("args", [])) != 1:
        return None
    source = nodes[0]["args"][0]
    name = layer["name"]

    def tensor(of: str) -> dict:
        return {"class_name": "__keras_tensor__", "config": {**source["config"], "keras_history": [of, 0, 0]}}

    def make(layer_name: str, class_name: str, config: dict, args: list) -> dict:
        return {"module": "keras.layers", "class_name": class_name, "registered_name": None, "name": layer_name,
                "config": {"name": layer_name, **config}, "inbound_nodes": [{"args": args, "kwargs": {}}]}

    sigmoid_name = name if activation == "hard_sigmoid" else f"{name}_hard_sigmoid"
    out = [
        make(f"{name}_plus3", "Rescaling", {"scale": 1.0, "offset": 3.0}, [source]),
        make(f"{name}_relu6", "ReLU", {"max_value": 6.0}, [tensor(f"{name}_plus3")]),
        make(sigmoid_name, "Rescaling", {"scale": 1.0 / 6.0, "offset": 0.0}, [tensor(f"{name}_relu6")]),
    ]
    if activation != "hard_sigmoid":
        out.append(make(name, "Multiply", {}, [[source, tensor(sigmoid_name)]]))
    return out


def rewrite_keras3_ops(model: Any) -> tuple[Any, tuple[str, ...]]:
    """Replaces Keras 3 symbolic ops with a scalar or two tensors (`x + 3.0`, `x * y`) by built-in layers.

    Keras 3 records `x + 3.0` on a KerasTensor as an op node (MobileNetV3's
    hard-sigmoid) that tf_keras cannot rebuild. Returns the model unchanged (and
    no rewrites) when there is nothing to replace.
    """
    if _keras.keras_flavor(model) != _keras.KERAS3 or type(model).__name__ not in ("Functional", "Model"):
        return model, ()
    config = model.get_config()
    rewrites = []
    layers = []
    for layer in config["layers"]:
        hard = _k3_hard_activation(layer)
        if hard is not None:
            rewrites.append(f"{layer['name']} (Activation {layer['config']['activation']}) -> Rescaling, ReLU(6), Rescaling"
                            + (", Multiply" if len(hard) == 4 else ""))
            layers.extend(hard)
            continue
        new = _k3_op_layer(layer)
        if new is not None:
            rewrites.append(f"{layer['name']} (keras.ops {layer['class_name']}) -> {new['class_name']}")
        layers.append(new or layer)
    if not rewrites:
        return model, ()
    config["layers"] = layers
    keras = _keras.keras_module(_keras.KERAS3)
    new_model = keras.Model.from_config(config)
    new_model.set_weights(model.get_weights())
    _check_same(model, new_model)
    return new_model, tuple(rewrites)


# --- public entry points ------------------------------------------------------------------------


def prepare(model: Any) -> Preparation:
    """Rewrites a tf_keras functional / Sequential model into a flat graph tfmot can quantize.

    Returns a `Preparation` with the new tf_keras model (same outputs), the
    rewrites done and the ops left as they were. The caller's model is not modified.

    Raises:
        TypeError: `model` is not a tf_keras model.
        NotImplementedError: a subclassed model (see `trace_subclassed`).
        ValueError: the rewritten model does not compute the same outputs.
    """
    if _keras.keras_flavor(model) != _keras.TF_KERAS:
        raise InvalidTypeError(f"prepare() expects a tf_keras model; received a {_keras.keras_flavor(model)} model. Use bridge.to_tf_keras first.")
    class_name = type(model).__name__
    if class_name not in _MODEL_CLASSES:
        raise UnsupportedModelError(f"prepare() needs a functional or Sequential model; {model.name!r} is a {class_name}.")
    tf_keras = _keras.keras_module(_keras.TF_KERAS)
    rewrites: list[str] = []
    untouched: list[str] = []
    config = _functional_config(class_name, model.get_config(), model.name)
    sources = {layer.name: layer for layer in model.layers}
    config = _flatten(config, sources, rewrites)
    config = _rewrite_ops(config, rewrites, untouched)
    if class_name == "Sequential":
        rewrites.insert(0, "Sequential model rebuilt as a functional model")
    new = tf_keras.Model.from_config(config)
    for layer in new.layers:
        source = sources.get(layer.name)
        if source is not None and layer.weights:
            layer.set_weights(source.get_weights())
    _check_same(model, new)
    return Preparation(new, tuple(rewrites), tuple(untouched))


def trace_subclassed(model: Any, *, input_shape: tuple[int, ...] | None = None):
    """A functional model over the layers of a subclassed model, traced by calling its `call` symbolically.

    Works when `call` only calls layers (and Keras ops): each layer call is
    recorded as a node of a functional graph that shares the original layers.

    Raises:
        NotImplementedError: the model cannot be traced (the reason is included).
        ValueError: no input shape is known; pass `input_shape`.
    """
    keras = _keras.keras_of(model)
    if input_shape is None:
        inputs = getattr(model, "inputs", None)
        if inputs:
            input_shape = tuple(inputs[0].shape[1:])
    if input_shape is None:
        raise InvalidArgumentError(
            f"Cannot trace subclassed model {model.name!r}: its input shape is unknown. Pass input_shape=(H, W, C)."
        )
    if not model.built:
        model.build((None, *input_shape))
    symbolic = keras.Input(tuple(input_shape), name=f"{model.name}_input")
    try:
        outputs = model.call(symbolic, training=False)
    except TypeError:
        outputs = model.call(symbolic)
    except Exception as err:  # noqa: BLE001 - any failure means "cannot be traced"
        raise UnsupportedModelError(f"subclassed model {model.name!r} could not be traced symbolically: {err}") from err
    traced = keras.Model(symbolic, outputs, name=f"{model.name}_traced")
    _check_same(model, traced, input_shape=input_shape)
    return traced


def _check_same(a: Any, b: Any, *, input_shape: tuple[int, ...] | None = None, atol: float = 1e-4) -> None:
    rng = np.random.default_rng(0)
    shapes = [input_shape] if input_shape is not None else [tuple(int(d or 1) for d in t.shape[1:]) for t in a.inputs]
    xs = [rng.random((2, *s), dtype=np.float32) for s in shapes]
    feed = xs[0] if len(xs) == 1 else xs
    out_a, out_b = a(feed, training=False), b(feed, training=False)
    flat_a = [np.asarray(v) for v in (out_a if isinstance(out_a, (list, tuple)) else [out_a])]
    flat_b = [np.asarray(v) for v in (out_b if isinstance(out_b, (list, tuple)) else [out_b])]
    diff = max(float(np.max(np.abs(x - y))) for x, y in zip(flat_a, flat_b))
    scale = max(float(np.max(np.abs(x))) for x in flat_a)
    if len(flat_a) != len(flat_b) or not np.isfinite(diff) or diff > atol * max(1.0, scale):
        raise InvalidArgumentError(f"The prepared model's outputs differ from {a.name!r} by up to {diff:.3g}; please report this model.")
