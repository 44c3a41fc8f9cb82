"""Builds the Keras 3 QAT graph: which layer gets which quantizer, Conv+BatchNorm folding, nested models inlined.

`build(model, ...)` rebuilds a functional Keras 3 model with
`keras.models.clone_model(clone_function=..., call_function=...)` (public API):

- weighted layers (Dense, Conv1D/2D, DepthwiseConv2D, SeparableConv1D/2D,
  Conv2DTranspose) become `QuantizeWrapper`s; a BatchNormalization that is
  their only consumer is folded into them and disappears from the graph;
- layers whose int8 kernel writes a new scale (Add, Concatenate, Multiply,
  global average pooling, activations, Rescaling, Normalization, a
  BatchNormalization left on its own, ...) get an `ActivationQuantizer` on
  their output;
- layers that keep their input's scale (max and average pooling, reshapes,
  padding, dropout) get nothing;
- the input of a quantized layer that is not quantized yet (a model input, or
  the output of a layer kept float) gets an `ActivationQuantizer` too;
- the output of a weighted layer, Add, Subtract or Multiply that only feeds a
  ReLU / ReLU6 is left alone (the converter fuses the ReLU into the op; the
  ReLU's output carries the range, so Keras rounds once where LiteRT does);
- nested functional and Sequential models are inlined into one flat graph.

Everything else stays float and is listed with its reason.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import keras
import numpy as np

from tfopt.compress import qat_layers
from tfopt.errors import UnsupportedModelError

# Layers (and keras.ops operations) whose int8 output gets its own range.
_OUTPUT = {
    "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate", "GlobalAveragePooling1D",
    "GlobalAveragePooling2D", "ReLU", "LeakyReLU", "PReLU", "ELU",
    "Softmax", "Activation", "Rescaling", "Normalization", "BatchNormalization", "UpSampling2D", "Resizing",
    "LayerNormalization", "Divide", "TrueDivide", "Mean",
    "LayerScale",  # keras.applications' ConvNeXt: x * gamma, one int8 MUL
}
# Layers and operations that keep the scale of their input.
_PASS = {
    "Reshape", "Flatten", "Dropout", "SpatialDropout1D", "SpatialDropout2D", "GaussianNoise", "GaussianDropout",
    "ZeroPadding1D", "ZeroPadding2D", "Cropping1D", "Cropping2D", "MaxPooling1D", "MaxPooling2D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "Permute", "Identity", "ActivityRegularization", "Transpose",
    "Squeeze", "ExpandDims",
    # LiteRT's int8 AVERAGE_POOL_2D requires the output scale of its input (the converter rejects another).
    "AveragePooling1D", "AveragePooling2D",
}
_ACTIVATIONS = {"linear", "relu", "relu6", "sigmoid", "hard_sigmoid", "hard_silu", "hard_swish", "silu", "swish",
                "tanh", "softmax", "elu", "leaky_relu", "gelu"}
_FUSABLE = {"relu", "relu6"}
# Merge layers whose LiteRT kernel takes a fused ReLU / ReLU6 (ADD, SUB, MUL).
_FUSES_RELU = {"Add", "Subtract", "Multiply"}
_MODEL_CLASSES = ("Functional", "Sequential")


@dataclasses.dataclass
class Plan:
    """What the builder did to each layer of the source model."""

    quantized: list[str] = dataclasses.field(default_factory=list)
    kept_float: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)  # (name, class, reason)
    folded: list[str] = dataclasses.field(default_factory=list)  # "conv <- bn"
    inlined: list[str] = dataclasses.field(default_factory=list)
    pairs: list[tuple[Any, Any]] = dataclasses.field(default_factory=list)  # (source layer, new layer or wrapper)
    # id(new layer or wrapper) -> function mapping the source layer's weights to the new layer's
    weight_maps: dict[int, Callable[[list], list]] = dataclasses.field(default_factory=dict)
    replaced: list[str] = dataclasses.field(default_factory=list)  # "layer: what it became"
    float32_from: set[str] = dataclasses.field(default_factory=set)  # mixed policies the QAT copy leaves


def float32_config(layer, plan: Plan) -> dict:
    """`layer`'s config, computing in float32 where its policy computed in float16 / bfloat16 (noted in `plan`).

    Fake quantization must see float32: bfloat16 keeps 8 bits of mantissa and float16 11, too few to hold
    256 int8 steps anywhere in a range, and the int8 converter reads float32 graphs only.
    """
    config = layer.get_config()
    policy = getattr(layer, "dtype_policy", None)
    if policy is not None and policy.compute_dtype in ("float16", "bfloat16"):
        plan.float32_from.add(policy.name)
        config["dtype"] = qat_layers.QAT_DTYPE
    return config


def activation_name(layer) -> str | None:
    """The name of a layer's activation function, or None."""
    return qat_layers.activation_name(getattr(layer, "activation", None))


def _rounds_inside(layer) -> bool:
    """An Activation layer LiteRT computes on a fixed output grid or as more than one kernel (swish)."""
    return type(layer).__name__ == "Activation" and activation_name(layer) in (*qat_layers.FIXED_RANGES, *qat_layers.TWO_KERNEL_ACTIVATIONS)


def _fusable_relu(layer) -> bool:
    kind = type(layer).__name__
    if kind == "ReLU":
        config = layer.get_config()
        return (config.get("negative_slope") or 0) == 0 and (config.get("threshold") or 0) == 0 and config.get(
            "max_value") in (None, 6, 6.0)
    return kind == "Activation" and activation_name(layer) in _FUSABLE


def weighted_reason(layer) -> str | None:
    """Why a weighted layer cannot be wrapped, or None when it can."""
    kind = type(layer).__name__
    if kind not in qat_layers.KERNELS:
        return None
    config = layer.get_config()
    if config.get("data_format", "channels_last") != "channels_last":
        return "channels_first layout; LiteRT kernels are channels-last"
    if config.get("groups", 1) != 1 and not depthwise_equivalent(layer):
        return "grouped convolution has no int8 LiteRT kernel"
    if config.get("lora_rank"):
        return "LoRA-enabled layer"
    if kind == "Dense" and len(layer.kernel.shape) != 2:
        return "Dense with a kernel that is not 2-D"
    if activation_name(layer) not in _ACTIVATIONS:
        return f"activation {activation_name(layer)!r} has no int8 LiteRT kernel"
    return None


def depthwise_equivalent(layer) -> bool:
    """A Conv2D whose groups equal its input and output channels: a depthwise convolution (ConvNeXt's)."""
    if type(layer).__name__ != "Conv2D":
        return False
    config = layer.get_config()
    groups = config.get("groups", 1)
    return groups > 1 and config["filters"] == groups and tuple(layer.kernel.shape)[2] == 1


def as_depthwise(layer, name: str):
    """(a DepthwiseConv2D computing the grouped Conv2D `layer`, a function mapping its weights)."""
    config = layer.get_config()
    keys = ("kernel_size", "strides", "padding", "data_format", "dilation_rate", "activation", "use_bias")
    new = keras.layers.DepthwiseConv2D(depth_multiplier=1, name=name, dtype=qat_layers.QAT_DTYPE, **{k: config[k] for k in keys})

    def weights(values: list) -> list:  # (kh, kw, 1, C) -> (kh, kw, C, 1); the bias is unchanged
        return [np.transpose(values[0], (0, 1, 3, 2)), *values[1:]]

    return new, weights


def _output_reason(layer) -> str | None:
    kind = type(layer).__name__
    if kind == "Activation" and activation_name(layer) not in _ACTIVATIONS:
        return f"activation {activation_name(layer)!r} has no int8 LiteRT kernel"
    if kind == "UpSampling2D" and layer.get_config().get("interpolation") not in ("nearest", "bilinear"):
        return "interpolation without an int8 LiteRT kernel"
    return None


def _producers(args: Any) -> list[str]:
    """Names of the layers whose outputs appear in a node's serialized arguments."""
    found: list[str] = []

    def walk(value):
        if isinstance(value, dict):
            if value.get("class_name") == "__keras_tensor__":
                found.append(value["config"]["keras_history"][0])
                return
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)

    walk(args)
    return found


def consumers(model) -> dict[str, list[str]]:
    """{layer name: names of the layers that consume its outputs} in a functional model's own graph."""
    result: dict[str, list[str]] = {}
    for entry in model.get_config()["layers"]:
        for node in entry.get("inbound_nodes") or []:
            for producer in _producers(node):
                result.setdefault(producer, []).append(entry["name"])
    output_layers = model.get_config().get("output_layers") or []
    for ref in _producers([{"class_name": "__keras_tensor__", "config": {"keras_history": r}} for r in
                           (output_layers if isinstance(output_layers[0], list) else [output_layers])] if output_layers else []):
        result.setdefault(ref, []).append("<output>")
    return result


def to_functional(model):
    """A functional model over the layers of a (cloned) Sequential model."""
    inputs = keras.Input(batch_shape=tuple(model.inputs[0].shape), dtype=model.inputs[0].dtype,
                         name=model.layers[0].name + "_input" if model.layers else None)
    x = inputs
    for layer in model.layers:
        x = layer(x)
    return keras.Model(inputs, x, name=model.name)


class _Builder:
    def __init__(self, *, skip: Callable[[Any], bool], preserve: str | None, ema_decay: float):
        self.skip = skip
        self.preserve = preserve
        self.ema_decay = ema_decay
        self.plan = Plan()
        self.names: set[str] = set()
        self.info: dict[int, dict] = {}  # id(new op) -> what to do when it is called
        self.quantized: set[int] = set()  # ids of new tensors that already carry a range
        self.input_quantizers: dict[int, Any] = {}
        self.consumers: dict[int, list] = {}  # id(source layer) -> consumer layers (same model)

    # --- analysis of a (nested) functional model ----------------------------------------------

    def learn(self, model) -> None:
        by_name = {layer.name: layer for layer in model.layers}
        for name, users in consumers(model).items():
            if name in by_name:
                self.consumers[id(by_name[name])] = [by_name.get(u) for u in users]

    def _sole_consumer(self, layer):
        users = self.consumers.get(id(layer), [])
        return users[0] if len(users) == 1 else None

    def _unique(self, name: str, scope: str) -> str:
        new = name if name not in self.names else f"{scope}_{name}"
        while new in self.names:
            new += "_"
        self.names.add(new)
        return new

    # --- clone_function ------------------------------------------------------------------------

    def clone(self, op, scope: str = ""):
        if not isinstance(op, keras.layers.Layer):
            self.info[id(op)] = {"mode": self._op_mode(op), "source": op}
            return op
        kind = type(op).__name__
        if kind in _MODEL_CLASSES:
            self.info[id(op)] = {"mode": "inline", "source": op}
            return op
        config = float32_config(op, self.plan)
        config["name"] = self._unique(op.name, scope)
        try:
            new = type(op).from_config(config)
        except Exception as err:  # noqa: BLE001 - any failure to rebuild; reuse weightless layers
            if op.weights:
                raise UnsupportedModelError(
                    f"Layer {op.name!r} ({kind}) cannot be rebuilt from its config ({err}); give it a working "
                    "get_config / from_config, or exclude it from the model before QAT."
                ) from err
            new = op  # a weightless layer (e.g. a Python Lambda safe mode refuses to rebuild) is shared
        info = {"mode": "float", "source": op, "reason": None}
        if self.skip(op):
            info["reason"] = "matched by exclude"
        elif kind in qat_layers.KERNELS:
            info.update(self._weighted(op, new))
        elif kind == "BatchNormalization" and id(op) in self.folded_bns:
            info["mode"] = "drop"
        elif kind in _PASS or (kind == "Activation" and activation_name(op) == "linear"):
            info["mode"] = "pass"
        elif kind == "Normalization" or (kind == "Rescaling" and np.any(np.asarray(config.get("offset", 0.0)) != 0)):
            # Two int8 kernels in LiteRT (SUB then MUL, MUL then ADD): rounded between them too.
            info.update(mode="weighted", wrapper=qat_layers.AffineQuantizeWrapper(new, ema_decay=self.ema_decay,
                                                                                  name=config["name"]))
        elif kind in _OUTPUT and _rounds_inside(op) and _output_reason(op) is None:
            # Replaced by a layer that rounds where LiteRT's kernels do; strip turns it back into an Activation.
            info.update(mode="weighted", wrapper=qat_layers.QuantizedActivation(
                op.activation, ema_decay=self.ema_decay, name=config["name"]))
        elif kind in _OUTPUT:
            reason = _output_reason(op)
            info.update(mode="output" if reason is None else "float", reason=reason)
            after = self._sole_consumer(op)
            if reason is None and kind in _FUSES_RELU and after is not None and _fusable_relu(after) and not self.skip(after):
                info["fused"] = True  # the converter fuses the ReLU into this op: one rounding, with the ReLU's range
        elif kind == "InputLayer":
            info["mode"] = "pass"
        else:
            info["reason"] = f"{kind} has no int8 QAT rule; the converter quantizes it from calibration data"
        if info.get("wrapper") is not None:
            new = info["wrapper"]
        self.info[id(new)] = info
        if info["mode"] != "drop":
            self.plan.pairs.append((op, new))
        if info["mode"] == "float":
            self.plan.kept_float.append((op.name, kind, info["reason"] or "kept float"))
        elif info["mode"] in ("weighted", "output"):
            self.plan.quantized.append(op.name)
        return new

    def _op_mode(self, op) -> str:
        kind = type(op).__name__
        if kind in _PASS:
            return "pass"
        if kind in _OUTPUT:
            return "output"
        return "float"

    folded_bns: set[int] = set()

    def _weighted(self, op, new) -> dict:
        reason = weighted_reason(op)
        if reason is not None:
            return {"mode": "float", "reason": reason}
        weight_map = None
        if depthwise_equivalent(op):
            new, weight_map = as_depthwise(op, new.name)
            self.plan.replaced.append(f"{op.name}: grouped Conv2D (groups = channels) computed as DepthwiseConv2D")
        bn = self._sole_consumer(op)
        batchnorm = None
        if (bn is not None and type(bn).__name__ == "BatchNormalization" and not self.skip(bn)
                and bn.axis in (-1, len(bn.input.shape) - 1) and activation_name(op) in (None, "linear")):
            batchnorm = type(bn).from_config(float32_config(bn, self.plan))
            self.folded_bns.add(id(bn))
            self.plan.folded.append(f"{op.name} <- {bn.name}")
            self.plan.pairs.append((bn, batchnorm))
            after = self._sole_consumer(bn)
        else:
            after = bn
        fuse = activation_name(op) in (None, "linear") and after is not None and _fusable_relu(after) and not self.skip(after)
        counts = self._cluster_counts(op) if self.preserve in ("clusters", "sparsity_clusters") else None
        wrapper = qat_layers.QuantizeWrapper(
            new, batchnorm=batchnorm, quantize_output=not fuse,
            preserve_sparsity=self.preserve in ("sparsity", "sparsity_clusters"),
            cluster_counts=counts, ema_decay=self.ema_decay, name=new.name,
        )
        if weight_map is not None:
            self.plan.weight_maps[id(wrapper)] = weight_map
        return {"mode": "weighted", "wrapper": wrapper, "fused": fuse}

    @staticmethod
    def _cluster_counts(op) -> dict:
        counts = {}
        for name in qat_layers.KERNELS[type(op).__name__]:
            values = np.unique(keras.ops.convert_to_numpy(getattr(op, name)))
            if len(values) <= 256:
                counts[name] = int(len(values))
        return counts

    # --- call_function -------------------------------------------------------------------------

    def call(self, op, *args, **kwargs):
        info = self.info.get(id(op), {"mode": "float"})
        mode = info["mode"]
        if mode == "inline":
            return self._inline(info["source"], *args, **kwargs)
        if mode == "drop":
            return args[0]
        if mode in ("weighted", "output"):
            args = keras.tree.map_structure(self._quantize_input, args)
        outputs = op(*args, **kwargs)
        flat = keras.tree.flatten(outputs)
        if mode == "output" and info.get("fused"):
            self.quantized.update(id(t) for t in flat)  # the fused ReLU after it carries the range
        elif mode == "output":
            fixed = qat_layers.FIXED_RANGES["softmax"] if type(op).__name__ == "Softmax" else None
            quantizer = qat_layers.ActivationQuantizer(self.ema_decay, fixed_range=fixed,
                                                       name=self._unique(f"{_name(op)}_quant", ""))
            self.plan.pairs.append((None, quantizer))
            outputs = quantizer(outputs)
            self.quantized.add(id(outputs))
        elif mode == "weighted":
            self.quantized.update(id(t) for t in flat)  # quantized inside, or left for a fused ReLU
        elif mode == "pass":
            inputs = [t for t in keras.tree.flatten((args, kwargs)) if isinstance(t, keras.KerasTensor)]
            if inputs and all(id(t) in self.quantized for t in inputs):
                self.quantized.update(id(t) for t in flat)
        return outputs

    def _quantize_input(self, tensor):
        if not isinstance(tensor, keras.KerasTensor) or id(tensor) in self.quantized:
            return tensor
        if id(tensor) not in self.input_quantizers:
            base = tensor.name.split("/")[0].split(":")[0] if tensor.name else "input"
            quantizer = qat_layers.ActivationQuantizer(self.ema_decay, name=self._unique(f"{base}_quant", ""))
            self.plan.pairs.append((None, quantizer))
            out = quantizer(tensor)
            self.quantized.add(id(out))
            self.input_quantizers[id(tensor)] = out
        return self.input_quantizers[id(tensor)]

    def _inline(self, model, *args, **kwargs):
        if kwargs.get("training") is not None or len(args) != 1:
            raise UnsupportedModelError(f"nested model {model.name!r} is called with arguments tfopt cannot inline.")
        self.plan.inlined.append(model.name)
        if type(model).__name__ == "Sequential":
            x = args[0]
            for layer in model.layers:
                x = self.call(self.clone(layer, model.name), x)
            return x
        self.learn(model)
        inner = keras.models.clone_model(
            model, input_tensors=args[0], clone_function=lambda op: self.clone(op, model.name), call_function=self.call
        )
        outputs = inner.outputs
        return outputs[0] if len(outputs) == 1 else outputs


def _name(op) -> str:
    return getattr(op, "name", None) or type(op).__name__.lower()


def build(model, *, skip: Callable[[Any], bool], preserve: str | None, ema_decay: float):
    """Returns (QAT functional model with fresh layers, Plan). The weights are copied by the caller."""
    builder = _Builder(skip=skip, preserve=preserve, ema_decay=ema_decay)
    builder.folded_bns = set()
    builder.learn(model)
    for layer in model.layers:
        builder.names.add(layer.name)
    builder.names.clear()
    new = keras.models.clone_model(model, clone_function=builder.clone, call_function=builder.call)
    return new, builder.plan
