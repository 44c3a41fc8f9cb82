"""tf_keras (Keras 2) QAT through tfmot: the preparer that rewrites what tfmot refuses, then `quantize_apply`.

Only tf_keras models come here (Keras 3 models use tfopt's native QAT). tfmot's
`quantize_apply` stops on TFOpLambda ops (`x + 3.0` in hard-swish, `x * y` in
squeeze-excite blocks), on models used as layers, and on Sequential quirks.
`prepare` works on the tf_keras functional config (public `get_config` /
`from_config` only) and returns an equivalent flat functional model:
Sequential -> functional, nested models inlined, TFOpLambda ops replaced by
built-in layers (`+`/`*` by a constant -> `Rescaling`, `+`/`*` of two tensors
-> `Add` / `Multiply`, relu / relu6 -> `ReLU`, sigmoid / swish -> `Activation`,
spatial `reduce_mean` -> `GlobalAveragePooling2D`; any other op stays and is
listed). `quantize_tf_keras` then annotates the layers tfmot supports, drops
the ones it refuses (each listed with its reason) and applies tfmot's 8-bit
scheme, or its collaborative scheme for `preserve="sparsity"` / `"clusters"`.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from typing import Any, Callable


from tfopt import _keras, _legacy
from tfopt.errors import InvalidArgumentError, InvalidTypeError, UnsupportedModelError

_MODEL_CLASSES = ("Functional", "Model", "Sequential")
_FOLDABLE = ("Conv2D", "DepthwiseConv2D", "Dense")
_REASONS = {
    "Rescaling": "tfmot has no quantizer for Rescaling (preprocessing, or a rewritten x*a+b op); quantized post-training at conversion",
    "Normalization": "preprocessing (Normalization) kept float in training; quantized post-training at conversion",
    "Conv1D": "tfmot has no Conv1D quantizer; quantized post-training at conversion",
    "TFOpLambda": "TF op tfmot cannot wrap; quantized post-training at conversion",
    "BatchNormalization": "BatchNormalization not directly after a Conv2D/DepthwiseConv2D/Dense",
}


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



# --- entry point ------------------------------------------------------------------------------


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
        raise InvalidTypeError(f"prepare() expects a tf_keras model; received a {_keras.keras_flavor(model)} model.")
    class_name = type(model).__name__
    if class_name not in _MODEL_CLASSES:
        raise UnsupportedModelError(f"prepare() needs a functional or Sequential model; {model.name!r} is a {class_name}.")
    tf_keras = _legacy.tf_keras_module()
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
    _keras.check_same_outputs(model, new)
    return Preparation(new, tuple(rewrites), tuple(untouched))


# --- tfmot ----------------------------------------------------------------------------------------


def quantize_tf_keras(model: Any, *, skip: Callable[[Any], bool] | None, preserve: str | None):
    """tfmot QAT of a prepared (flat, functional) tf_keras model.

    Returns (QAT tf_keras model, {"quantized": names, "kept_float": [(name, class, reason)]}).
    """
    tfmot = _legacy.import_tfmot()
    chosen, kept = _select(model, skip)
    scheme = _scheme(tfmot, preserve)
    result = None
    for _ in range(len(chosen) + 1):
        try:
            result = _apply(tfmot, model, chosen, scheme)
            break
        except (ValueError, TypeError, AttributeError, KeyError, RuntimeError) as err:
            culprit = _culprit(err, chosen)
            if culprit is None:
                raise InvalidArgumentError(
                    f"tfmot could not quantize model {model.name!r}: {err}. Keep layers float with exclude=[...]."
                ) from err
            chosen.discard(culprit)
            layer = model.get_layer(culprit)
            kept.append((culprit, type(layer).__name__, f"tfmot refused it ({str(err).splitlines()[0][:120]})"))
    if result is None or not chosen:
        raise InvalidArgumentError(f"No layer of {model.name!r} can be quantized; kept float: {[k[0] for k in kept]}.")
    order = {layer.name: i for i, layer in enumerate(model.layers)}
    return result, {
        "quantized": tuple(sorted(chosen, key=order.get)),
        "kept_float": tuple(sorted(kept, key=lambda item: order.get(item[0], 0))),
    }


def load_qat(path: str):
    """Loads a tfmot QAT model saved as `.h5` (tfmot wrappers do not reload from `.keras`)."""
    tfmot = _legacy.import_tfmot()
    with tfmot.quantization.keras.quantize_scope():  # the file's configs are checked before tf_keras runs anything
        return _keras.load_model(path)


def _scheme(tfmot, preserve: str | None):
    if preserve == "sparsity":
        return tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
    if preserve == "clusters":
        return tfmot.experimental.combine.Default8BitClusterPreserveQuantizeScheme()
    return tfmot.quantization.keras.default_8bit.Default8BitQuantizeScheme()


def _apply(tfmot, model, chosen: set, scheme):
    api = tfmot.quantization.keras

    def annotate(layer):
        clone = layer.__class__.from_config(layer.get_config())
        return api.quantize_annotate_layer(clone) if layer.name in chosen else clone

    annotated = _legacy.tf_keras_module().models.clone_model(model, clone_function=annotate)
    annotated.set_weights(model.get_weights())
    with api.quantize_scope():
        return api.quantize_apply(annotated, scheme)


def _culprit(err: Exception, chosen: set) -> str | None:
    text = str(err)
    hits = [name for name in chosen if re.search(rf"(^|[^\w]){re.escape(name)}([^\w]|$)", text)]
    return max(hits, key=len) if hits else None


def _supported(layer, registry) -> bool:
    try:
        return bool(registry.supports(layer))
    except (ValueError, TypeError, AttributeError):
        return False


def _registry():
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (  # tfmot has no public path
        default_8bit_quantize_registry,
    )

    return default_8bit_quantize_registry.Default8BitQuantizeRegistry()


def _inbound_names(model) -> dict[str, list[str]]:
    result = {}
    for layer in model.get_config()["layers"]:
        names = []
        for node in layer.get("inbound_nodes") or []:
            for entry in _node_entries(node):
                names.append(entry[0])
        result[layer["name"]] = names
    return result


def _select(model, skip) -> tuple[set, list]:
    registry = _registry()
    inbound = _inbound_names(model)
    consumers: dict[str, int] = {}
    for names in inbound.values():
        for name in names:
            consumers[name] = consumers.get(name, 0) + 1
    chosen, kept = set(), []
    for layer in model.layers:
        class_name = type(layer).__name__
        if class_name == "InputLayer":
            continue
        reason = None
        if skip is not None and skip(layer):
            reason = "matched by exclude"
        elif class_name == "BatchNormalization":
            parents = inbound.get(layer.name, [])
            ok = len(parents) == 1 and type(model.get_layer(parents[0])).__name__ in _FOLDABLE and consumers.get(parents[0]) == 1
            reason = None if ok else _REASONS["BatchNormalization"] + "; it is folded into a multiply-add at conversion"
        elif not _supported(layer, registry):
            if not layer.weights and class_name in ("Reshape", "Flatten", "Dropout", "ZeroPadding2D", "Cropping2D"):
                continue  # shape-only layers need no quantizer
            reason = _REASONS.get(class_name) or f"tfmot's 8-bit scheme does not support {class_name}; quantized post-training at conversion"
        if reason is None:
            chosen.add(layer.name)
        else:
            kept.append((layer.name, class_name, reason))
    return chosen, kept
