"""Moves a model between Keras 3 and tf_keras (Keras 2) with identical weights.

tfmot 0.8 only understands tf_keras models, while TensorFlow 2.16+ builds
Keras 3 models by default. `to_tf_keras` rebuilds a Keras 3 functional or
Sequential model as tf_keras from its config (rewritten where the two formats
differ) and copies the weights; `to_keras3` does the reverse, so tfopt can
hand back a model in the flavour the user gave.

Both functions check that the rebuilt model computes the same outputs as the
original on a random batch and raise if it does not: a silent mismatch here
would corrupt every later step.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from tfopt import _keras
from tfopt._legacy import _keras3_layer
from tfopt.errors import InvalidArgumentError, UnsupportedModelError

# Keys Keras 3 adds to serialized objects that tf_keras does not know.
_KERAS3_ONLY_KEYS = ("module", "registered_name", "build_config", "compile_config", "shared_object_id")
# Arguments dropped without a check: they change nothing in the computation.
_HARMLESS = {"input_axes", "output_axes", "autocast", "dynamic"}
# Keras 3 arguments read from **kwargs (so not in the signature), with the value that tf_keras computes anyway.
_KNOWN_DEFAULTS = {"rms_scaling": False}
# Module prefixes of Keras 3 layers that tf_keras re-implements under the same class name.
_BUILTIN_MODULES = ("keras.layers", "keras.src.layers", "keras")
# Registered name of the tf_keras layer that runs a Keras 3 layer or op (see `_keras3_layer_class`).
_KERAS3_LAYER = "tfopt>Keras3Layer"
# Base `Layer.__init__` keyword arguments accepted by each flavour (beyond the class signature).
_TF_KERAS_LAYER_KWARGS = {
    "input_dim", "input_shape", "batch_input_shape", "batch_size", "weights", "activity_regularizer",
    "autocast", "implementation", "name", "trainable", "dtype", "dynamic",
}
_KERAS3_LAYER_KWARGS = {"activity_regularizer", "trainable", "dtype", "autocast", "name", "input_shape", "input_dim"}


def to_tf_keras(model: Any, *, check: bool = True):
    """Rebuilds a Keras 3 functional or Sequential model as a tf_keras model.

    Use it to hand a Keras 3 model to tools that only speak tf_keras (tfmot).
    The config is rewritten (InputLayer `batch_shape` -> `batch_input_shape`,
    dtype policies -> dtype names, the new node format -> the old one, and
    arguments tf_keras does not know are dropped), then the weights are copied.
    Keras 3 ops in the graph (`x + 3.0`) and layers tf_keras lacks (custom
    layers such as ConvNeXt's `LayerScale`) run inside a tfopt wrapper layer
    with their weights mirrored. A subclassed model with a known input shape is
    first traced into a functional model (`as_functional`). A tf_keras model
    is returned as is.

    Args:
        model: a built Keras 3 (or tf_keras) functional or Sequential model, or
            a built subclassed Keras 3 model whose `call` composes layers and ops.
        check: compare the outputs of both models on a random batch.
            Defaults to `True`.

    Returns:
        A new tf_keras model with the same architecture and weights.

    Raises:
        NotImplementedError: for subclassed models, or layers tf_keras lacks.
        ValueError: if the rebuilt model does not compute the same outputs.

    Example:

    >>> import keras
    >>> from tfopt._legacy.bridge import to_tf_keras
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> type(to_tf_keras(m)).__module__.split(".")[0]
    'tf_keras'
    """
    if _keras.keras_flavor(model) == _keras.TF_KERAS:
        return model
    tf_keras = _keras.keras_module(_keras.TF_KERAS)
    register_wrapper()  # the wrapper used for Keras 3 ops and custom layers
    model = as_functional(model)
    config = _functional_config(model)
    rewritten = _rewrite(config, tf_keras, to_legacy=True)
    try:
        if type(model).__name__ == "Sequential":
            new = tf_keras.Sequential.from_config(rewritten)
        else:
            new = tf_keras.Model.from_config(rewritten)
    except (ValueError, TypeError, KeyError) as err:
        raise UnsupportedModelError(
            f"Could not rebuild Keras 3 model {model.name!r} as a tf_keras model: {err}. "
            "Functional and Sequential models of built-in layers are supported; for custom layers, "
            "build the model with tf_keras directly."
        ) from err
    copy_weights(model, new)
    if check:
        _check_same_outputs(model, new)
    return new


def to_keras3(model: Any, *, check: bool = True):
    """Rebuilds a tf_keras functional or Sequential model as a Keras 3 model.

    The inverse of `to_tf_keras`, used to return a model in the flavour the
    user gave. A Keras 3 model is returned as is.

    Args:
        model: a built tf_keras (or Keras 3) functional or Sequential model.
        check: compare the outputs of both models on a random batch.
            Defaults to `True`.

    Returns:
        A new Keras 3 model with the same architecture and weights.

    Raises:
        NotImplementedError: for subclassed models, or layers Keras 3 lacks.
        ValueError: if the rebuilt model does not compute the same outputs.

    Example:

    >>> import tf_keras
    >>> from tfopt._legacy.bridge import to_keras3
    >>> m = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
    >>> type(to_keras3(m)).__module__.split(".")[0]
    'keras'
    """
    if _keras.keras_flavor(model) == _keras.KERAS3:
        return model
    keras = _keras.keras_module(_keras.KERAS3)
    config = _functional_config(model)
    rewritten = _rewrite(config, keras, to_legacy=False)
    try:
        if type(model).__name__ == "Sequential":
            new = keras.Sequential.from_config(rewritten)
        else:
            new = keras.Model.from_config(rewritten)
    except (ValueError, TypeError, KeyError) as err:
        raise UnsupportedModelError(
            f"Could not rebuild tf_keras model {model.name!r} as a Keras 3 model: {err}. "
            "Functional and Sequential models of built-in layers are supported."
        ) from err
    copy_weights(model, new)
    if check:
        _check_same_outputs(model, new)
    return new


def as_functional(model: Any):
    """A functional model computing what a subclassed model computes, with the same layers.

    Functional and Sequential models are returned as is. A built subclassed
    model is traced: its `call` is run on a `keras.Input` of the shape it was
    built with, which records the layers and ops it calls into a functional
    graph (the returned model shares the layer objects, so copy it before
    changing weights). This works when `call` composes layers and ops without
    Python branches on tensor values.

    Raises:
        NotImplementedError: if the model is not built, or `call` cannot be traced.

    Example:

    >>> import keras, numpy as np
    >>> from tfopt._legacy.bridge import as_functional
    >>> class Net(keras.Model):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.hidden, self.out = keras.layers.Dense(8), keras.layers.Dense(2)
    ...     def call(self, x):
    ...         return self.out(self.hidden(x) * 2.0)
    >>> net = Net(); _ = net(np.ones((1, 4), "float32"))
    >>> [type(layer).__name__ for layer in as_functional(net).layers]
    ['InputLayer', 'Dense', 'Dense']
    """
    if _is_graph_model(model):
        return model
    keras = _keras.keras_of(model)
    alternative = (
        "Build it with the functional API (keras.Input -> layers -> keras.Model), or call the model once on "
        "a batch of the right shape before passing it."
    )
    build = model.get_build_config() if model.built else None
    shape = (build or {}).get("input_shape")
    if shape is None or not isinstance(shape, (list, tuple)) or not shape or isinstance(shape[0], (list, tuple, dict)):
        raise UnsupportedModelError(
            f"Cannot trace subclassed model {model.name!r} ({type(model).__name__}) into a functional graph: "
            f"it needs one input of known shape (build config: {build!r}). {alternative}"
        )
    try:
        inputs = keras.Input(tuple(shape[1:]), batch_size=None)
        outputs = model.call(inputs)
        traced = keras.Model(inputs, outputs, name=model.name)
    except Exception as err:  # noqa: BLE001 - user code: any failure means "not traceable", with its reason
        raise UnsupportedModelError(
            f"Cannot trace subclassed model {model.name!r} ({type(model).__name__}) into a functional graph: "
            f"{type(err).__name__}: {err}. {alternative}"
        ) from err
    return traced


def _is_graph_model(model: Any) -> bool:
    return type(model).__name__ in ("Functional", "Sequential") or (
        bool(getattr(model, "_is_graph_network", False)) and type(model).__name__ == "Model"
    ) or (type(model).__name__ == "Model" and bool(getattr(model, "inputs", None)))


def _functional_config(model: Any) -> dict:
    if not _is_graph_model(model):
        raise UnsupportedModelError(
            f"Cannot move subclassed model {model.name!r} ({type(model).__name__}) between Keras 3 and "
            "tf_keras: only functional and Sequential models have a portable config. "
            "Rebuild it with the functional API, or build it with tf_keras."
        )
    return model.get_config()


def _rewrite(obj: Any, target, *, to_legacy: bool) -> Any:
    """Recursively rewrites a model config for the target Keras module."""
    if isinstance(obj, (list, tuple)):
        return [_rewrite(item, target, to_legacy=to_legacy) for item in obj]
    if not isinstance(obj, dict):
        return obj
    if to_legacy and obj.get("class_name") in ("DTypePolicy", "FloatDTypePolicy"):
        return obj["config"]["name"]
    out = {}
    for key, value in obj.items():
        if to_legacy and key in _KERAS3_ONLY_KEYS:
            continue
        if key == "layers" and isinstance(value, list) and "class_name" not in obj:
            out[key] = [_rewrite_layer(entry, target, to_legacy=to_legacy) for entry in value]
        elif key == "inbound_nodes":
            out[key] = _legacy_nodes(value) if to_legacy else value
        elif key in ("input_layers", "output_layers"):
            refs = _nested_refs(value)
            out[key] = refs if to_legacy or len(refs) != 1 else refs[0]
        else:
            out[key] = _rewrite(value, target, to_legacy=to_legacy)
    if "class_name" in out and isinstance(out.get("config"), dict):
        out["config"] = _fit_config(out["class_name"], out["config"], target, to_legacy=to_legacy)
    if isinstance(out.get("layers"), list) and "class_name" not in obj:
        _shift_nested_nodes(out, +1 if to_legacy else -1)
    return out


def _shift_nested_nodes(config: dict, delta: int) -> None:
    """tf_keras counts a nested model's own construction as its node 0; Keras 3 does not.

    References to the outer calls of nested functional/Sequential models are
    shifted by one when moving between the two.
    """
    nested = set()
    for entry in config["layers"]:
        if not isinstance(entry, dict) or entry.get("class_name") not in ("Functional", "Sequential", "Model"):
            continue
        inner = entry.get("config", {}).get("layers", [])
        if entry["class_name"] != "Sequential" or any(
            isinstance(l, dict) and l.get("class_name") == "InputLayer" for l in inner
        ):
            nested.add(entry.get("name", entry.get("config", {}).get("name")))
    if not nested:
        return

    def shift(value: Any) -> Any:
        if isinstance(value, dict):
            if value.get("class_name") == "__keras_tensor__":
                history = value["config"]["keras_history"]
                if history[0] in nested:
                    history[1] = max(int(history[1]) + delta, 0)
                return value
            return {k: shift(v) for k, v in value.items()}
        if isinstance(value, list):
            if len(value) >= 3 and isinstance(value[0], str) and isinstance(value[1], int) and value[0] in nested:
                return [value[0], max(value[1] + delta, 0)] + value[2:]
            return [shift(v) for v in value]
        return value

    for entry in config["layers"]:
        if isinstance(entry, dict) and "inbound_nodes" in entry:
            entry["inbound_nodes"] = shift(entry["inbound_nodes"])
    for key in ("input_layers", "output_layers"):
        if key in config:
            config[key] = shift(config[key])


def _rewrite_layer(entry: Any, target, *, to_legacy: bool) -> Any:
    """One entry of a model's `layers` list; Keras 3 ops and foreign layers go into the wrapper layer."""
    if not isinstance(entry, dict) or "class_name" not in entry:
        return _rewrite(entry, target, to_legacy=to_legacy)
    if not to_legacy:
        if entry["class_name"] in (_KERAS3_LAYER, "Keras3Layer"):
            return _unwrap_entry(entry)
        return _rewrite(entry, target, to_legacy=False)
    if _needs_wrapper(entry, target):
        return _wrap_entry(entry)
    try:
        return _rewrite(entry, target, to_legacy=True)
    except NotImplementedError:
        if entry["class_name"] in ("Functional", "Sequential", "Model", "InputLayer"):
            raise
        return _wrap_entry(entry)  # a built-in layer with arguments tf_keras lacks runs as Keras 3


def _needs_wrapper(entry: dict, target) -> bool:
    module = entry.get("module") or ""
    name = entry["class_name"]
    if module.startswith("keras.src.ops"):
        return True
    if name in ("Functional", "Sequential", "Model", "InputLayer"):
        return False
    if module and not (module in _BUILTIN_MODULES or module.startswith("keras.src.models")):
        return True
    activation = entry.get("config", {}).get("activation")
    if isinstance(activation, str):
        try:
            target.activations.get(activation)
        except (ValueError, TypeError):
            return True  # e.g. Keras 3's "hard_silu": run the layer as Keras 3
    return _find_class(name, target) is None


def _wrap_entry(entry: dict) -> dict:
    inner = {k: v for k, v in entry.items() if k != "inbound_nodes"}
    template, nodes = None, []
    for node in entry.get("inbound_nodes", []):
        if not isinstance(node, dict):
            raise UnsupportedModelError(f"Layer {entry.get('name')!r} has a node in an unknown format: {node!r}.")
        args, kwargs, refs = _keras3_layer.to_template(node.get("args", []), node.get("kwargs", {}))
        if template is not None and template != (args, kwargs):
            raise UnsupportedModelError(
                f"Layer {entry.get('name')!r} ({entry['class_name']}) is called several times with different "
                "constant arguments, which tfopt cannot carry to tf_keras. Call it once per layer object."
            )
        template = (args, kwargs)
        nodes.append([list(r) + [{}] for r in refs])
    args, kwargs = template if template is not None else ([{"__tensor__": 0}], {})
    config = entry.get("config", {})
    dtype = config.get("dtype")
    if isinstance(dtype, dict):
        dtype = dtype.get("config", {}).get("name", "float32")
    return {
        "class_name": _KERAS3_LAYER,
        "config": {
            "name": entry.get("name", config.get("name")),
            "trainable": config.get("trainable", True),
            "dtype": dtype or "float32",
            "keras3_config": inner,
            "call_args": args,
            "call_kwargs": kwargs,
        },
        "name": entry.get("name", config.get("name")),
        "inbound_nodes": nodes,
    }


def _unwrap_entry(entry: dict) -> dict:
    config = entry["config"]
    original = dict(config["keras3_config"])
    original["name"] = entry.get("name", config["name"])
    nodes = []
    for node in entry.get("inbound_nodes", []):
        refs = [list(item[:3]) for item in node]
        nodes.append(_keras3_layer.keras3_node(config["call_args"], config["call_kwargs"], refs))
    original["inbound_nodes"] = nodes
    return original


def _fit_config(class_name: str, config: dict, target, *, to_legacy: bool) -> dict:
    """Renames and drops arguments so `class_name(**config)` works in the target Keras."""
    config = dict(config)
    if class_name == "InputLayer":
        if to_legacy:
            if "batch_shape" in config:
                config["batch_input_shape"] = config.pop("batch_shape")
            config.pop("optional", None)
        elif "batch_input_shape" in config:
            config["batch_shape"] = config.pop("batch_input_shape")
        return config
    if not to_legacy and class_name == "BatchNormalization" and isinstance(config.get("axis"), list):
        if len(config["axis"]) != 1:
            raise UnsupportedModelError(f"Keras 3 BatchNormalization takes one axis. Received: axis={config['axis']}.")
        config["axis"] = config["axis"][0]
    klass = _find_class(class_name, target)
    if klass is None:
        return config
    allowed = _accepted_arguments(klass, to_legacy=to_legacy)
    source = _find_class(class_name, _keras.keras_module(_keras.KERAS3 if to_legacy else _keras.TF_KERAS))
    defaults = _defaults(source) if source is not None else {}
    for key in [k for k in config if k not in allowed]:
        value = config.pop(key)
        if key in _HARMLESS or (key in defaults and defaults[key] == value) or value is None or (
            key in _KNOWN_DEFAULTS and _KNOWN_DEFAULTS[key] == value
        ):
            continue
        if class_name.startswith("Separable") and key.startswith("kernel_"):
            continue  # tf_keras separable convs inherit kernel_* arguments they never use (no single kernel)
        raise UnsupportedModelError(
            f"{class_name} argument {key}={value!r} has no equivalent in "
            f"{'tf_keras' if to_legacy else 'Keras 3'}; set it to its default or build the model "
            "with the other Keras."
        )
    return config


def _defaults(klass) -> dict:
    defaults: dict = {}
    for base in reversed(klass.__mro__):
        init = base.__dict__.get("__init__")
        if init is None:
            continue
        for name, p in inspect.signature(init).parameters.items():
            if p.default is not p.empty:
                defaults[name] = p.default
    return defaults


def _accepted_arguments(klass, *, to_legacy: bool) -> set:
    """Argument names `klass(**config)` accepts, following `**kwargs` up the class hierarchy."""
    accepted: set = set()
    for base in klass.__mro__:
        init = base.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters
        accepted |= {name for name, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return accepted
    return accepted | (_TF_KERAS_LAYER_KWARGS if to_legacy else _KERAS3_LAYER_KWARGS)


def _find_class(class_name: str, target):
    for namespace in (target.layers, target.initializers, target.regularizers, target.constraints):
        klass = getattr(namespace, class_name, None)
        if inspect.isclass(klass):
            return klass
    return None


def _nested_refs(refs: Any) -> list:
    if refs and isinstance(refs[0], str):
        return [list(refs)]
    return [list(r) for r in refs]


def _legacy_nodes(nodes: list) -> list:
    """Keras 3 `{"args": ..., "kwargs": ...}` nodes -> tf_keras `[[name, node, tensor, kwargs], ...]`."""
    legacy = []
    for node in nodes:
        if not isinstance(node, dict):
            legacy.append(node)
            continue
        args = list(node.get("args", []))
        kwargs = {k: v for k, v in node.get("kwargs", {}).items() if v is not None}
        first, rest = (args[0], args[1:]) if args else (None, [])
        tensors = first if isinstance(first, (list, tuple)) else [first]
        if rest or any(_is_tensor(v) for v in kwargs.values()) or not all(_is_tensor(t) for t in tensors):
            raise UnsupportedModelError(
                "A layer is called with extra tensor arguments, which tfopt cannot translate to tf_keras. "
                f"Received node: {node!r}."
            )
        legacy.append([list(t["config"]["keras_history"]) + [kwargs] for t in tensors])
    return legacy


def _is_tensor(value: Any) -> bool:
    return isinstance(value, dict) and value.get("class_name") == "__keras_tensor__"


def register_wrapper() -> None:
    """Registers tfopt's tf_keras wrapper for Keras 3 layers, so models holding it load and clone."""
    _keras3_layer.keras3_layer_class()


def copy_weights(source: Any, target: Any) -> None:
    """Copies weights layer by layer, matched by name (the bridge keeps every layer name)."""
    by_name = {layer.name: layer for layer in target.layers}
    for layer in source.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        other = by_name.get(layer.name)
        shapes = [w.shape for w in weights]
        if other is None or [tuple(w.shape) for w in other.get_weights()] != [tuple(s) for s in shapes]:
            found = None if other is None else [tuple(w.shape) for w in other.get_weights()]
            raise InvalidArgumentError(
                f"The rebuilt model's layer {layer.name!r} holds weights of shapes {found}, the original {shapes}; "
                "the layer config did not translate. Please report this model."
            )
        other.set_weights(weights)


def _check_same_outputs(a: Any, b: Any, *, atol: float = 1e-4) -> None:
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((2,) + tuple(int(d or 1) for d in t.shape[1:])).astype("float32") for t in a.inputs]
    feed = inputs[0] if len(inputs) == 1 else inputs
    out_a = a(feed, training=False)
    out_b = b(feed, training=False)
    flat_a = out_a if isinstance(out_a, (list, tuple)) else [out_a]
    flat_b = out_b if isinstance(out_b, (list, tuple)) else [out_b]
    for x, y in zip(flat_a, flat_b):
        x, y = np.asarray(x), np.asarray(y)
        if not np.array_equal(np.isfinite(x), np.isfinite(y)):
            raise InvalidArgumentError(f"The rebuilt model's outputs are not finite where {a.name!r}'s are. Please report this model.")
        finite = np.isfinite(x)
        diff = float(np.max(np.abs(x[finite] - y[finite]))) if finite.any() else 0.0
        scale = max(1.0, float(np.max(np.abs(x[finite]))) if finite.any() else 1.0)
        if diff > atol * scale:
            raise InvalidArgumentError(
                f"The rebuilt model's outputs differ from {a.name!r} by up to {diff:.3g}; "
                "the conversion is not faithful. Please report this model."
            )


def max_output_difference(a: Any, b: Any, x: np.ndarray) -> float:
    """Largest absolute difference between two models' outputs on `x` (inference mode)."""
    out_a = np.asarray(a(x, training=False))
    out_b = np.asarray(b(x, training=False))
    return float(np.max(np.abs(out_a - out_b)))
