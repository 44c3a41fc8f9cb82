"""Channel dependency analysis for structured (channel) pruning.

Removing output channel `c` of a convolution is only valid if every layer that
sees channel `c` downstream drops it too, and if every tensor that is added to,
multiplied with or otherwise aligned with that channel drops the same index.
This module reads a Keras model's config (the public functional graph), gives
every channel axis a *channel space*, and joins spaces that must stay aligned
with a union-find (residual `Add`, squeeze-excite `Multiply`, ...). The result
is a `ChannelGraph`: for each layer call, the layout of its input and output
channel axes as segments of spaces (a `Concatenate` output is several segments,
a `Flatten` output repeats the segments once per spatial position).

A space is *frozen* (never pruned) when it touches something tfopt cannot
slice: a model input or output, a layer type it does not know, a shared layer,
a channels-first layer, a grouped convolution, ... Frozen spaces carry the
reasons, which the pruning report lists.

Nothing here changes a model; `tfopt.compress.channels` decides what to keep
and rebuilds the model.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from tfopt.errors import InvalidArgumentError, UnsupportedModelError

TensorId = tuple  # (layer name, node index, tensor index), as in Keras' keras_history

# Layers that create a new channel space: their output channels can be removed.
SOURCE = {"Conv1D", "Conv2D", "Conv3D", "Dense", "SeparableConv1D", "SeparableConv2D"}
# Per-channel layers with weights on the channel axis: sliced, channel space carried through.
WEIGHTED = {"BatchNormalization", "DepthwiseConv1D", "DepthwiseConv2D", "PReLU"}
# Per-channel layers without channel weights: channel space carried through unchanged.
PASS = {
    "Activation", "ReLU", "LeakyReLU", "ELU", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
    "SpatialDropout3D", "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization",
    "Identity", "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D",
    "AveragePooling3D", "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D", "ZeroPadding1D", "ZeroPadding2D",
    "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D", "UpSampling1D", "UpSampling2D", "UpSampling3D",
}
# Element-wise merges: all inputs (and the output) share one channel space.
MERGE = {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"}
# Weight names each handled layer may hold; anything else (quantized, LoRA) is left whole.
WEIGHT_NAMES = {
    "Conv1D": {"kernel", "bias"}, "Conv2D": {"kernel", "bias"}, "Conv3D": {"kernel", "bias"},
    "Dense": {"kernel", "bias"},
    "SeparableConv1D": {"depthwise_kernel", "pointwise_kernel", "bias"},
    "SeparableConv2D": {"depthwise_kernel", "pointwise_kernel", "bias"},
    "BatchNormalization": {"gamma", "beta", "moving_mean", "moving_variance"},
    "DepthwiseConv1D": {"kernel", "depthwise_kernel", "bias"},
    "DepthwiseConv2D": {"kernel", "depthwise_kernel", "bias"},
    "PReLU": {"alpha"},
}
CHANNEL_MIXING_ACTIVATIONS = {"softmax", "log_softmax"}
# Why common layers outside the sets above are left whole.
KNOWN_OPAQUE = {
    "LayerNormalization": "normalizes across channels",
    "GroupNormalization": "normalizes across groups of channels",
    "UnitNormalization": "normalizes across channels",
    "Softmax": "softmax mixes channels",
    "Lambda": "runs an arbitrary Python function",
    "Conv1DTranspose": "transposed convolutions are not sliced yet",
    "Conv2DTranspose": "transposed convolutions are not sliced yet",
    "Conv3DTranspose": "transposed convolutions are not sliced yet",
    "Permute": "moves the channel axis",
    "Functional": "nested model",
    "Sequential": "nested model",
    "Model": "nested model",
}


def weight_name(variable: Any) -> str:
    """`"kernel"` for a Keras 3 variable named `kernel` or a tf_keras one named `conv/kernel:0`."""
    return variable.name.split("/")[-1].split(":")[0]


@dataclasses.dataclass(frozen=True)
class Layout:
    """The channel axis of a tensor: `repeat` copies of consecutive segments `(space, size)`."""

    segments: tuple
    repeat: int = 1

    @property
    def size(self) -> int:
        return self.repeat * sum(size for _, size in self.segments)


class Spaces:
    """Union-find over channel spaces, with the reasons a space must stay whole."""

    def __init__(self):
        self.parent: list[int] = []
        self.sizes: list[int] = []
        self.reasons: dict[int, list[str]] = {}

    def new(self, size: int, frozen: str | None = None) -> int:
        self.parent.append(len(self.parent))
        self.sizes.append(int(size))
        if frozen:
            self.reasons[len(self.parent) - 1] = [frozen]
        return len(self.parent) - 1

    def find(self, space: int) -> int:
        while self.parent[space] != space:
            self.parent[space] = self.parent[self.parent[space]]
            space = self.parent[space]
        return space

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        self.parent[b] = a
        merged = self.reasons.pop(a, []) + self.reasons.pop(b, [])
        if self.sizes[a] != self.sizes[b]:
            merged.append(f"channel counts {self.sizes[a]} and {self.sizes[b]} must match")
        if merged:
            self.reasons[a] = merged

    def freeze(self, space: int, reason: str) -> None:
        root = self.find(space)
        reasons = self.reasons.setdefault(root, [])
        if reason not in reasons:
            reasons.append(reason)

    def frozen_reasons(self, space: int) -> list[str]:
        return self.reasons.get(self.find(space), [])


@dataclasses.dataclass
class Node:
    """One call of one layer in the graph, with the channel layouts around it."""

    layer: str
    class_name: str
    config: dict
    inputs: list
    input_shapes: list
    outputs: list
    kind: str = "opaque"  # input | source | weighted | pass | merge | concat | flatten | reshape | opaque
    reason: str | None = None
    reshape: str | None = None  # "last" (channel axis kept) or "flat" (flattened) for Reshape
    in_layouts: list = dataclasses.field(default_factory=list)
    out_layout: Layout | None = None


@dataclasses.dataclass
class ChannelGraph:
    """Layer calls in topological order and the channel spaces joining them."""

    nodes: list
    spaces: Spaces
    opaque: dict  # layer name -> why tfopt leaves it (and the channels around it) whole

    def node(self, layer: str) -> Node | None:
        for node in self.nodes:
            if node.layer == layer:
                return node
        return None

    def keep_indices(self, layout: Layout, kept: dict) -> np.ndarray:
        """Indices along the channel axis that survive, given kept indices per space root."""
        parts, offset = [], 0
        for space, size in layout.segments:
            index = kept.get(self.spaces.find(space))
            parts.append((np.arange(size) if index is None else np.asarray(index)) + offset)
            offset += size
        base = np.concatenate(parts) if parts else np.zeros(0, dtype=int)
        return np.concatenate([base + r * offset for r in range(layout.repeat)]).astype(int)


def _tensor_refs(obj: Any, shapes: dict, found: list) -> None:
    """Collects keras_history references (in order) from a Keras 3 inbound-node structure."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            cfg = obj.get("config", {})
            ref = tuple(cfg["keras_history"])
            found.append(ref)
            if cfg.get("shape") is not None:
                shapes.setdefault(ref, tuple(cfg["shape"]))
            return
        for value in obj.values():
            _tensor_refs(value, shapes, found)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _tensor_refs(value, shapes, found)


def _node_inputs(node: Any, shapes: dict) -> tuple[list, bool]:
    """(input tensor refs from args, whether any tensor hides in kwargs) for both config formats."""
    if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}}
        args, kwargs = [], []
        _tensor_refs(node.get("args", []), shapes, args)
        _tensor_refs(node.get("kwargs", {}), shapes, kwargs)
        return args, bool(kwargs)
    refs = [tuple(item[:3]) for item in node]  # tf_keras: [[name, node, index, kwargs], ...]
    return refs, False


def _ref_list(value: Any) -> list:
    if value and isinstance(value[0], str):
        return [tuple(value)]
    return [tuple(v) for v in value]


def _layer_shapes(layer: Any) -> list:
    """Output shapes of a single-call layer from its public `output` (empty if unavailable)."""
    try:
        out = layer.output
    except (AttributeError, ValueError, RuntimeError):
        return []
    outs = out if isinstance(out, (list, tuple)) else [out]
    return [tuple(t.shape) for t in outs]


def build_graph(model: Any) -> ChannelGraph:
    """Reads `model`'s functional or Sequential config into a `ChannelGraph`.

    Raises:
        NotImplementedError: for subclassed models without a layer graph.
    """
    config = model.get_config()
    if not isinstance(config, dict) or "layers" not in config:
        raise UnsupportedModelError(
            f"Channel pruning needs a functional or Sequential Keras model; received {type(model).__name__} "
            "whose config has no layer graph. Rebuild it with keras.Input and the functional API."
        )
    live = {layer.name: layer for layer in model.layers}
    shapes: dict = {}
    nodes: list[Node] = []
    calls: dict[str, int] = {}
    if "input_layers" in config:  # functional
        for entry in config["layers"]:
            name = entry.get("name") or entry["config"]["name"]
            inbound = entry.get("inbound_nodes", [])
            calls[name] = len(inbound)
            if entry["class_name"] == "InputLayer" or not inbound:
                nodes.append(Node(name, entry["class_name"], entry["config"], [], [], [(name, 0, 0)], kind="input"))
                continue
            for index, call in enumerate(inbound):
                refs, hidden = _node_inputs(call, shapes)
                node = Node(name, entry["class_name"], entry["config"], refs, [], [(name, index, 0)])
                if hidden:
                    node.reason = "takes tensors as keyword arguments"
                nodes.append(node)
        inputs, outputs = _ref_list(config["input_layers"]), _ref_list(config["output_layers"])
    else:  # Sequential: a chain
        entries = config["layers"]
        if entries and entries[0]["class_name"] == "InputLayer":
            first = entries[0]["config"]["name"]
            entries = entries[1:]
        else:
            first = "__input__"
        if not getattr(model, "inputs", None):
            raise InvalidArgumentError(
                f"Sequential model {model.name!r} is not built. Build it first, e.g. "
                "keras.Sequential([keras.Input(shape), ...]) or model.build(input_shape)."
            )
        shapes[(first, 0, 0)] = tuple(model.inputs[0].shape)
        nodes.append(Node(first, "InputLayer", {}, [], [], [(first, 0, 0)], kind="input"))
        prev = (first, 0, 0)
        for entry in entries:
            name = entry["config"]["name"]
            calls[name] = 1
            nodes.append(Node(name, entry["class_name"], entry["config"], [prev], [], [(name, 0, 0)]))
            prev = (name, 0, 0)
        inputs, outputs = [(first, 0, 0)], [prev]
    for name, layer in live.items():
        if calls.get(name, 1) <= 1:  # tf_keras configs list no inbound node for an InputLayer
            for index, shape in enumerate(_layer_shapes(layer)):
                shapes.setdefault((name, 0, index), shape)
    # tf_keras configs carry no tensor shapes: take the model's own input and output shapes.
    for refs, tensors in ((inputs, model.inputs), (outputs, model.outputs)):
        for ref, tensor in zip(refs, tensors):
            shapes.setdefault(ref, tuple(tensor.shape))
    extra_outputs: dict = {}
    for node in nodes:
        for ref in node.inputs:
            extra_outputs.setdefault(ref[:2], set()).add(ref[2])
    for node in nodes:
        node.input_shapes = [shapes.get(ref) for ref in node.inputs or node.outputs[:1]]
        indices = extra_outputs.get(node.outputs[0][:2], {0}) | {0}
        node.outputs = [(node.layer, node.outputs[0][1], i) for i in sorted(indices)]
    for ref in outputs:
        for node in nodes:
            if node.outputs[0][:2] == ref[:2] and ref not in node.outputs:
                node.outputs.append(ref)
    return _propagate(nodes, live, calls, shapes, inputs, outputs)


def _classify(node: Node, layer: Any, calls: int) -> tuple[str, str | None]:
    """(kind, reason-if-opaque) for one layer call."""
    name, cfg = node.class_name, node.config
    if node.kind == "input":
        return "input", None
    if node.reason:
        return "opaque", node.reason
    if layer is None:
        return "opaque", "no live layer of this name"
    klass = type(layer)
    if klass.__name__ != name or not klass.__module__.startswith(("keras.", "tf_keras.")):
        return "opaque", f"{klass.__module__}.{klass.__name__} is not a built-in Keras layer tfopt can slice"
    if calls > 1:
        return "opaque", f"shared layer (called {calls} times)"
    if cfg.get("data_format", "channels_last") != "channels_last":
        return "opaque", "channels_first data format"
    if name in SOURCE | WEIGHTED:
        extra = {weight_name(w) for w in layer.weights} - WEIGHT_NAMES[name]
        if extra:
            return "opaque", f"unexpected weights {sorted(extra)} (quantized or LoRA layer?)"
    if name in ("Conv1D", "Conv2D", "Conv3D") and cfg.get("groups", 1) != 1:
        return "opaque", f"grouped convolution (groups={cfg['groups']})"
    if name.startswith("Depthwise") and cfg.get("depth_multiplier", 1) != 1:
        return "opaque", f"depth_multiplier={cfg['depth_multiplier']} (only 1 carries channels through)"
    if cfg.get("activation") in CHANNEL_MIXING_ACTIVATIONS and name not in SOURCE:
        return "opaque", f"{cfg['activation']} mixes channels"
    if name == "BatchNormalization":
        rank = len(node.input_shapes[0] or ())
        axis = cfg.get("axis", -1)
        axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
        if not isinstance(axis, int) or axis not in (-1, rank - 1):
            return "opaque", f"normalizes axis {axis}, not the channel axis"
    for kind, members in (("source", SOURCE), ("weighted", WEIGHTED), ("pass", PASS), ("merge", MERGE)):
        if name in members:
            return kind, None
    if name in ("Concatenate", "Flatten", "Reshape"):
        return name.lower() if name != "Concatenate" else "concat", None
    return "opaque", KNOWN_OPAQUE.get(name, f"{name} is not a layer type channel pruning knows")


def _propagate(nodes, live, calls, shapes, inputs, outputs) -> ChannelGraph:
    spaces = Spaces()
    layouts: dict = {}
    opaque: dict = {}
    ordered: list[Node] = []
    pending = list(nodes)
    while pending:
        ready = [n for n in pending if all(ref in layouts for ref in n.inputs)]
        if not ready:
            ready = pending[:1]  # disconnected reference: treat as opaque below
            ready[0].reason = ready[0].reason or "inputs not found in the graph"
        for node in ready:
            pending.remove(node)
            node.kind, reason = _classify(node, live.get(node.layer), calls.get(node.layer, 1))
            node.in_layouts = [layouts.get(ref) for ref in node.inputs]
            if node.kind != "input" and (not node.inputs or any(lay is None for lay in node.in_layouts)):
                node.kind, reason = "opaque", reason or "inputs not found in the graph"
            if node.kind != "opaque":
                reason = _apply_kind(node, spaces)
                if reason:
                    node.kind = "opaque"
            if node.kind == "opaque":
                _make_opaque(node, spaces, shapes, reason)
                opaque[node.layer] = reason
            layouts[node.outputs[0]] = node.out_layout
            for ref in node.outputs[1:]:  # extra outputs of a multi-output (opaque) layer
                size = _last(shapes.get(ref))
                layouts[ref] = Layout(((spaces.new(size, f"output of {node.layer}"), size),))
            ordered.append(node)
    for ref in inputs:
        for space, _ in layouts[ref].segments:
            spaces.freeze(space, "model input")
    for ref in outputs:
        if ref in layouts:
            for space, _ in layouts[ref].segments:
                spaces.freeze(space, "model output")
    return ChannelGraph(ordered, spaces, opaque)


def _last(shape) -> int:
    return int(shape[-1]) if shape and shape[-1] is not None else 0


def _make_opaque(node: Node, spaces: Spaces, shapes: dict, reason: str | None) -> None:
    for layout in node.in_layouts:
        for space, _ in (layout.segments if layout else ()):
            spaces.freeze(space, f"feeds {node.layer} ({node.class_name}), left whole: {reason}")
    size = _last(shapes.get(node.outputs[0]))
    node.out_layout = Layout(((spaces.new(size, f"output of {node.layer} ({node.class_name}), left whole"), size),))


def _unify(node: Node, layouts: list, spaces: Spaces) -> Layout:
    """Joins layouts that must align channel by channel; returns the common layout."""
    first = layouts[0]
    for other in layouts[1:]:
        same = other.repeat == first.repeat and [s for _, s in other.segments] == [s for _, s in first.segments]
        if same:
            for (a, _), (b, _) in zip(first.segments, other.segments):
                spaces.union(a, b)
        else:
            for space, _ in first.segments + other.segments:
                spaces.freeze(space, f"{node.layer} ({node.class_name}) joins differently concatenated channels")
    return first


def _apply_kind(node: Node, spaces: Spaces) -> str | None:
    """Sets `node.out_layout` for a handled kind; returns a reason when it turns out opaque."""
    ins, shapes = node.in_layouts, node.input_shapes
    kind, cfg = node.kind, node.config
    if kind == "input":
        size = _last(shapes[0]) if shapes else 0
        node.out_layout = Layout(((spaces.new(size, "model input"), size),))
        return None
    if kind in ("source", "weighted", "pass", "flatten", "reshape") and len(ins) != 1:
        return f"expected one input, got {len(ins)}"
    if kind == "source":
        if node.class_name != "Dense" and ins[0].repeat != 1:
            return "input is a flattened layout"
        size = int(cfg.get("filters") or cfg.get("units"))
        node.out_layout = Layout(((spaces.new(size), size),))
    elif kind in ("weighted", "pass"):
        node.out_layout = ins[0]
    elif kind == "merge":
        outs = [_last(s) for s in shapes]
        width = max(outs)
        aligned = [lay for lay, w in zip(ins, outs) if w == width or width == 1]
        node.out_layout = _unify(node, aligned, spaces)
    elif kind == "concat":
        rank = len(shapes[0] or ())
        axis = cfg.get("axis", -1)
        if axis in (-1, rank - 1):
            if any(lay.repeat != 1 for lay in ins):
                return "concatenates flattened layouts"
            node.out_layout = Layout(tuple(seg for lay in ins for seg in lay.segments))
        else:
            node.out_layout = _unify(node, ins, spaces)
    elif kind == "flatten":
        shape = shapes[0]
        if shape is None or any(d is None for d in shape[1:]):
            return "flattens a tensor of unknown spatial size"
        node.out_layout = Layout(ins[0].segments, ins[0].repeat * int(np.prod(shape[1:-1], dtype=int)))
    elif kind == "reshape":
        shape, target = shapes[0], list(cfg.get("target_shape", ()))
        if shape is None or not target:
            return "unknown shapes"
        if target[-1] == shape[-1] and target[-1] not in (-1, None):
            node.out_layout = ins[0]
            node.reshape = "last"
        elif len(target) == 1 and None not in shape[1:] and target[0] in (-1, int(np.prod(shape[1:], dtype=int))):
            node.out_layout = Layout(ins[0].segments, ins[0].repeat * int(np.prod(shape[1:-1], dtype=int)))
            node.reshape = "flat"
        else:
            return f"reshape {tuple(shape[1:])} -> {tuple(target)} moves the channel axis"
    return None
