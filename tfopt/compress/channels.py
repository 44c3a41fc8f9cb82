"""Channel (filter) pruning: a smaller dense Keras model, faster on every runtime.

Unstructured sparsity only pays where the runtime has sparse kernels (XNNPACK
on x86 has none). Removing whole output channels of Conv / Dense layers, and
the matching inputs downstream, gives an ordinary dense model with fewer
parameters and fewer FLOPs. `prune_channels` reads the model's graph (see
`tfopt.compress.channel_graph`), keeps the most important channels of every
channel group that is safe to shrink, rebuilds the model from its config with
the new widths and copies the surviving weights. The caller's model is never
touched.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, Iterable

import numpy as np

from tfopt._keras import keras_of
from tfopt.compress.channel_graph import ChannelGraph, build_graph, weight_name
from tfopt.compress.select import selected_names
from tfopt.errors import InvalidArgumentError, UnsupportedModelError

IMPORTANCES = ("l1", "l2", "bn", "activation")
_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class LayerChannels:
    """Output channels of one Conv / Dense layer before and after pruning."""

    name: str
    class_name: str
    group: int
    channels_before: int
    channels_after: int
    reason: str | None = None  # why the layer was left whole (None when pruned)


@dataclasses.dataclass(frozen=True)
class ChannelGroup:
    """Layers whose output channels must be pruned together (joined by Add, Multiply, ...)."""

    index: int
    layers: tuple
    channels_before: int
    channels_after: int
    importance: str
    reason: str | None = None


@dataclasses.dataclass
class ChannelPruneResult:
    """What `prune_channels` returns: the new model and what was removed.

    Attributes:
        model: the pruned Keras model (new weights, same layer names).
        ratio, importance: the options used.
        layers: `LayerChannels` for every Conv / Dense / SeparableConv layer.
        groups: `ChannelGroup`s (channels pruned together).
        skipped_layers: layers tfopt cannot slice, with the reason; channels
            that touch them are left whole.
        kept_channels: for each layer whose output channels shrank, the kept
            indices into the original channels.
        params_before, params_after: parameter counts.
    """

    model: Any
    ratio: float
    importance: str
    layers: tuple
    groups: tuple
    skipped_layers: dict
    kept_channels: dict
    params_before: int
    params_after: int

    @property
    def param_ratio(self) -> float:
        return self.params_after / max(self.params_before, 1)

    def summary(self) -> str:
        pruned = sum(layer.reason is None for layer in self.layers)
        lines = [
            f"Channel pruning: ratio={self.ratio}, importance={self.importance!r}",
            f"params {self.params_before:,} -> {self.params_after:,} ({self.param_ratio:.3f}x); "
            f"{pruned} of {len(self.layers)} Conv/Dense layers pruned in "
            f"{sum(g.reason is None for g in self.groups)} of {len(self.groups)} groups",
            f"{'layer':<32} {'type':<16} {'group':>5} {'before':>7} {'after':>6}  note",
        ]
        for layer in self.layers:
            lines.append(
                f"{layer.name[:32]:<32} {layer.class_name[:16]:<16} {layer.group:>5} "
                f"{layer.channels_before:>7} {layer.channels_after:>6}  {layer.reason or ''}"
            )
        for name, reason in self.skipped_layers.items():
            lines.append(f"left whole: {name}: {reason}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "ratio": self.ratio,
            "importance": self.importance,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "param_ratio": self.param_ratio,
            "layers": [dataclasses.asdict(layer) for layer in self.layers],
            "groups": [dict(dataclasses.asdict(g), layers=list(g.layers)) for g in self.groups],
            "skipped_layers": dict(self.skipped_layers),
            "kept_channels": {name: [int(i) for i in idx] for name, idx in self.kept_channels.items()},
        }


def keep_count(channels: int, ratio: float, *, round_to: int = 1, min_channels: int = 1) -> int:
    """Channels to keep out of `channels` when removing a fraction `ratio`.

    Rounds the kept count up to a multiple of `round_to`, never below
    `min_channels` and never above `channels`.

    >>> keep_count(32, 0.5), keep_count(20, 0.5, round_to=8), keep_count(4, 0.9, min_channels=2)
    (16, 16, 2)
    """
    keep = math.ceil(round(channels * (1.0 - ratio), 6))
    keep = int(math.ceil(keep / round_to) * round_to)
    return int(min(channels, max(keep, min_channels, 1)))


def top_channels(scores: np.ndarray, keep: int) -> np.ndarray:
    """Indices of the `keep` largest scores, in ascending index order (ties keep the lower index).

    >>> top_channels(np.array([0.1, 3.0, 2.0, 3.0]), 2)
    array([1, 3])
    """
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return np.sort(order[:keep])


def kernel_scores(kernel: np.ndarray, norm: str) -> np.ndarray:
    """L1 or L2 norm of each output channel (last axis) of a kernel.

    >>> kernel_scores(np.array([[1.0, -2.0], [3.0, 0.0]]), "l1")
    array([4., 2.])
    """
    flat = np.abs(np.asarray(kernel, dtype=np.float64).reshape(-1, kernel.shape[-1]))
    return flat.sum(axis=0) if norm == "l1" else np.sqrt((flat**2).sum(axis=0))


def _normalized(scores: np.ndarray) -> np.ndarray:
    """Scales a layer's scores to mean 1 so layers with different fan-in weigh equally in a group."""
    return scores / (float(np.mean(scores)) + _EPS)




def _validate(ratio, importance, data, round_to, min_channels) -> None:
    if not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
        raise InvalidArgumentError(f"ratio must be a number in [0, 1) (fraction of channels removed). Received: ratio={ratio!r}.")
    if importance not in IMPORTANCES:
        raise InvalidArgumentError(f"importance must be one of {IMPORTANCES}. Received: importance={importance!r}.")
    if importance == "activation" and data is None:
        raise InvalidArgumentError("importance='activation' needs data=: pass a few hundred input samples, e.g. data=x_train[:256].")
    if importance != "activation" and data is not None:
        raise InvalidArgumentError(
            f"data= is only used with importance='activation'. Received data with importance={importance!r}; "
            "drop data= or pass importance='activation'."
        )
    for name, value in (("round_to", round_to), ("min_channels", min_channels)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidArgumentError(f"{name} must be an integer >= 1. Received: {name}={value!r}.")


def _layer_weights(layer: Any) -> dict[str, np.ndarray]:
    return {weight_name(w): v for w, v in zip(layer.weights, layer.get_weights())}


def _weight_scores(graph: ChannelGraph, layers: dict, root: int, sources: list, importance: str):
    """(summed normalized scores, importance actually used) for one group."""
    if importance == "bn":
        gammas = []
        for node in graph.nodes:
            lay = node.in_layouts[0] if node.in_layouts else None
            if (node.kind == "weighted" and node.class_name == "BatchNormalization" and lay is not None
                    and lay.repeat == 1 and len(lay.segments) == 1 and graph.spaces.find(lay.segments[0][0]) == root):
                gamma = _layer_weights(layers[node.layer]).get("gamma")
                if gamma is not None:
                    gammas.append(_normalized(np.abs(gamma.astype(np.float64))))
        if gammas:
            return np.sum(gammas, axis=0), "bn"
        importance = "l1"
        used = "l1 (no BatchNormalization with scale follows)"
    else:
        used = importance
    total = 0.0
    for node in sources:
        weights = _layer_weights(layers[node.layer])
        kernel = weights.get("pointwise_kernel", weights.get("kernel"))
        total = total + _normalized(kernel_scores(kernel, importance))
    return total, used


def _as_batches(data: Any, batch_size: int = 32) -> Iterable:
    if isinstance(data, tuple) and len(data) in (2, 3) and hasattr(data[0], "shape"):
        data = data[0]
    if hasattr(data, "shape"):
        array = np.asarray(data)
        for start in range(0, len(array), batch_size):
            yield array[start:start + batch_size]
        return
    for batch in data:  # tf.data.Dataset or any iterable of batches
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


def _activation_scores(model: Any, graph: ChannelGraph, data: Any) -> dict[int, np.ndarray]:
    """Mean |activation| of the channels each Conv / Dense / Flatten actually reads, summed per group."""
    keras = keras_of(model)
    refs, layouts = [], []
    for node in graph.nodes:
        if node.kind in ("source", "flatten") and node.inputs and node.inputs[0] not in refs:
            lay = node.in_layouts[0]
            if lay.repeat == 1 and not all(graph.spaces.frozen_reasons(s) for s, _ in lay.segments):
                refs.append(node.inputs[0])
                layouts.append(lay)
    tensors, kept = [], []
    names = {layer.name: layer for layer in model.layers}
    for ref, lay in zip(refs, layouts):
        layer = names.get(ref[0])
        if layer is None or ref[1] != 0:
            continue
        out = layer.output
        tensors.append(out[ref[2]] if isinstance(out, (list, tuple)) else out)
        kept.append(lay)
    if not tensors:
        return {}
    if len(model.inputs) != 1:
        raise UnsupportedModelError(
            f"importance='activation' supports single-input models; {model.name!r} has {len(model.inputs)} inputs. "
            "Use importance='l1' or 'bn'."
        )
    probe = keras.Model(model.inputs[0], tensors)
    sums = [np.zeros(lay.size) for lay in kept]
    rows = [0] * len(kept)
    for batch in _as_batches(data):
        outs = probe(batch, training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for i, out in enumerate(outs):
            values = np.abs(np.asarray(out, dtype=np.float64)).reshape(-1, kept[i].size)
            sums[i] += values.sum(axis=0)
            rows[i] += values.shape[0]
    scores: dict[int, np.ndarray] = {}
    for lay, total, count in zip(kept, sums, rows):
        offset = 0
        for space, size in lay.segments:
            root = graph.spaces.find(space)
            part = _normalized(total[offset:offset + size] / max(count, 1))
            scores[root] = scores.get(root, 0.0) + part
            offset += size
    return scores


def _slice_weights(node, weights: dict, in_keep: np.ndarray, out_keep: np.ndarray) -> dict:
    """The surviving part of each weight of a handled layer."""
    out = {}
    for name, value in weights.items():
        if node.kind == "weighted":
            if node.class_name.startswith("Depthwise") and name != "bias":
                value = np.take(value, in_keep, axis=-2)
            elif node.class_name != "PReLU" or value.shape[-1] == node.in_layouts[0].size:
                value = np.take(value, in_keep, axis=-1)
        elif name == "depthwise_kernel":  # separable: (k..., in, multiplier)
            value = np.take(value, in_keep, axis=-2)
        elif name in ("kernel", "pointwise_kernel"):
            rows = in_keep
            if name == "pointwise_kernel":
                mult = weights["depthwise_kernel"].shape[-1]
                rows = (in_keep[:, None] * mult + np.arange(mult)).ravel()
            value = np.take(np.take(value, rows, axis=-2), out_keep, axis=-1)
        elif name == "bias":
            value = value[out_keep]
        out[name] = value
    return out


def _source_groups(graph: ChannelGraph) -> dict[int, list]:
    """Channel-space root -> the Conv / Dense calls whose outputs form that group, in graph order."""
    groups: dict[int, list] = {}
    for node in graph.nodes:
        if node.kind == "source":
            groups.setdefault(graph.spaces.find(node.out_layout.segments[0][0]), []).append(node)
    return groups


def _group_reason(graph, root, names, included, excluded, keep, options) -> str | None:
    """Why a group is left whole, or None when it is pruned."""
    reason = "; ".join(graph.spaces.frozen_reasons(root)) or None
    if reason is None and included is not None and not set(names) <= included:
        reason = f"not selected by include ({', '.join(sorted(set(names) - included))})"
    if reason is None and set(names) & excluded:
        reason = f"excluded ({', '.join(sorted(set(names) & excluded))})"
    if reason is None and keep >= graph.spaces.sizes[root]:
        reason = (f"ratio {options['ratio']} with round_to={options['round_to']}, "
                  f"min_channels={options['min_channels']} keeps all {graph.spaces.sizes[root]}")
    return reason


def _rebuild(model: Any, graph: ChannelGraph, kept: dict) -> Any:
    """A new model from the edited config, with the surviving weights copied in."""
    keras = keras_of(model)
    first = {}
    for node in graph.nodes:
        first.setdefault(node.layer, node)
    config = copy.deepcopy(model.get_config())
    for entry in config["layers"]:
        node = first.get(entry.get("name") or entry["config"]["name"])
        if node is None or node.kind in ("opaque", "input"):
            continue
        entry.pop("build_config", None)  # shapes are re-inferred from the new inputs
        cfg = entry["config"]
        width = len(graph.keep_indices(node.out_layout, kept))
        if node.kind == "source":
            cfg["units" if "units" in cfg else "filters"] = width
        elif node.kind == "reshape" and node.reshape == "last":
            cfg["target_shape"] = list(cfg["target_shape"][:-1]) + [width]
        elif node.kind == "reshape" and cfg["target_shape"][0] != -1:
            cfg["target_shape"] = [width]
    custom = {type(layer).__name__: type(layer) for layer in model.layers}
    klass = keras.Sequential if isinstance(model, keras.Sequential) else keras.Model
    new = klass.from_config(config, custom_objects=custom)
    old_layers = {layer.name: layer for layer in model.layers}
    for layer in new.layers:
        old = old_layers[layer.name]
        node = first.get(layer.name)
        if node is not None and node.kind in ("source", "weighted"):
            in_keep = graph.keep_indices(node.in_layouts[0], kept)
            out_keep = graph.keep_indices(node.out_layout, kept)
            sliced = _slice_weights(node, _layer_weights(old), in_keep, out_keep)
            layer.set_weights([sliced[weight_name(w)] for w in layer.weights])
        elif old.weights:
            layer.set_weights(old.get_weights())
    return new


def prune_channels(
    model: Any,
    *,
    ratio: float = 0.5,
    importance: str = "l1",
    data: Any = None,
    include: Any = None,
    exclude: Any = None,
    round_to: int = 1,
    min_channels: int = 1,
) -> ChannelPruneResult:
    """Removes the least important output channels of Conv / Dense layers.

    Use it when you need a model that is really smaller and faster on a dense
    runtime (XNNPACK, TFLite Micro, GPU delegates): unlike unstructured
    pruning, the result holds no zeros but fewer channels. Fine-tune it
    afterwards; accuracy drops until you do.

    Output channels of `Conv1D/2D/3D`, `Dense` and the pointwise part of
    `SeparableConv1D/2D` are removed together with the matching inputs
    downstream (`BatchNormalization`, `DepthwiseConv`, activations, pooling,
    padding, `Flatten` rows of the next `Dense`, ...). Channels joined by
    `Add` / `Multiply` / `Average` (residuals, squeeze-excite) form one group
    and lose the same indices; `Concatenate` maps index ranges. The model's
    outputs and inputs keep their width. Channels that touch a layer tfopt
    cannot slice (custom layers, shared layers, Lambda, LayerNormalization,
    grouped convolutions, ...) are left whole and listed, never fatal.

    Args:
        model: a built Keras 3 or tf_keras functional or Sequential model.
            It is not modified.
        ratio: fraction of channels to remove from every prunable group, in
            `[0, 1)`. `0.0` rebuilds an identical model. Defaults to `0.5`.
        importance: how channels are ranked within a group: `"l1"` / `"l2"`
            (norm of each output filter), `"bn"` (|gamma| of the following
            BatchNormalization, falling back to `"l1"` where none follows), or
            `"activation"` (mean |activation| on `data`). Scores are scaled to
            mean 1 per layer and summed over the group. Defaults to `"l1"`.
        data: input samples for `importance="activation"`: an array, an
            `(x, y)` tuple or an iterable of batches (e.g. a `tf.data.Dataset`).
            A few hundred samples are enough. Defaults to `None`.
        include: only prune groups whose Conv / Dense layers all match: a layer
            name, `"re:<regex>"` (full match), a callable `layer -> bool`, or a
            list of these. Defaults to `None` (all layers).
        exclude: leave groups containing a matching layer whole. Same forms as
            `include`. Defaults to `None`.
        round_to: keep channel counts a multiple of this (e.g. `8` for SIMD
            friendly widths); rounds up. Defaults to `1`.
        min_channels: never keep fewer channels than this in a group.
            Defaults to `1`.

    Returns:
        A `ChannelPruneResult`: `.model` is the new (uncompiled) Keras model,
        `.summary()` prints channels before/after per layer and what was left
        whole and why, `.to_dict()` gives the same as JSON-ready data.

    Raises:
        ValueError: for an option out of range, a missing `data` for
            `importance="activation"`, or an `include` / `exclude` rule that
            matches no layer.
        TypeError: if `model` is not a Keras model.
        NotImplementedError: for a subclassed model without a layer graph.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((28, 28, 1)),
    ...     keras.layers.Conv2D(16, 3, activation="relu"), keras.layers.Flatten(),
    ...     keras.layers.Dense(10)])
    >>> result = prune_channels(model, ratio=0.5)
    >>> result.model.layers[0].filters
    8
    """
    _validate(ratio, importance, data, round_to, min_channels)
    keras_of(model)  # raises TypeError for non-models
    if not model.built:
        raise InvalidArgumentError(f"Model {model.name!r} is not built. Call it on data or model.build(input_shape) first.")
    graph = build_graph(model)
    layers = {layer.name: layer for layer in model.layers}
    names = list(layers)
    included = selected_names(include, [layers[n] for n in names], "include")
    excluded = selected_names(exclude, [layers[n] for n in names], "exclude") or set()
    activation = _activation_scores(model, graph, data) if importance == "activation" else {}
    options = dict(ratio=ratio, round_to=round_to, min_channels=min_channels)
    kept: dict[int, np.ndarray] = {}
    group_rows, layer_rows = [], []
    for index, (root, sources) in enumerate(_source_groups(graph).items()):
        size = graph.spaces.sizes[root]
        names_in = tuple(node.layer for node in sources)
        keep = keep_count(size, ratio, round_to=round_to, min_channels=min_channels)
        reason = _group_reason(graph, root, names_in, included, excluded, keep, options)
        used = importance
        if reason is None:
            if root in activation:
                scores = activation[root]
            else:
                fallback = "l1" if importance == "activation" else importance
                scores, used = _weight_scores(graph, layers, root, sources, fallback)
                used = "l1 (activation not measurable here)" if importance == "activation" else used
            kept[root] = top_channels(scores, keep)
        after = size if reason else keep
        group_rows.append(ChannelGroup(index, names_in, size, after, used, reason))
        layer_rows.extend(LayerChannels(n.layer, n.class_name, index, size, after, reason) for n in sources)
    order = {node.layer: i for i, node in enumerate(graph.nodes)}
    layer_rows.sort(key=lambda row: order[row.name])
    new = _rebuild(model, graph, kept)
    kept_channels = {}
    for node in graph.nodes:
        if node.kind in ("source", "weighted"):
            idx = graph.keep_indices(node.out_layout, kept)
            if len(idx) < node.out_layout.size:
                kept_channels[node.layer] = idx.tolist()
    return ChannelPruneResult(
        model=new, ratio=float(ratio), importance=importance, layers=tuple(layer_rows), groups=tuple(group_rows),
        skipped_layers=dict(graph.opaque), kept_channels=kept_channels,
        params_before=int(model.count_params()), params_after=int(new.count_params()),
    )


def handle(model: Any, config: Any, context: Any) -> ChannelPruneResult:
    """`tfopt.apply`'s handler for a `ChannelPruneConfig` (the recipe's inputs rank channels by activation)."""
    return prune_channels(
        model, ratio=config.ratio, importance=config.importance,
        data=context.x if config.importance == "activation" else None, include=config.include,
        exclude=config.exclude, round_to=config.round_to, min_channels=config.min_channels,
    )
