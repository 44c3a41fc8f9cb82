"""Weight clustering (weight sharing): Keras 3 models natively, tf_keras models through tfmot.

`cluster` returns a model of the caller's Keras whose selected layers are
wrapped for clustering: each kernel is computed from `num_clusters` shared
values (centroids) that train under the caller's own training code. A Keras 3
model comes back as a Keras 3 model wrapped by
`tfopt.compress.cluster_layer.ClusterWeights` (trainable centroids, fixed
k-means assignments, a zero mask with `preserve_sparsity`); it trains with
`keras.optimizers` objects, Keras 3 callbacks, a `tf.GradientTape` loop or
`tf.distribute`, and saves and loads with `model.save` /
`keras.models.load_model`. A tf_keras model goes through tfmot
(`tfopt._legacy.cluster`) and comes back as tf_keras.

`strip_clustering` returns a plain model of the same flavour whose clustered
kernels hold at most `num_clusters` unique values (per output channel with
`per_channel=True`), plus 0 with `preserve_sparsity=True`.

The k-means maths lives in `tfopt.compress.kmeans` (plain numpy), the check of
unique values in a model or .tflite in `tfopt.analyze.cluster_report`, and the
BatchNorm re-estimation in `tfopt.compress.batchnorm`.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from typing import Any

import numpy as np

from tfopt import _keras
from tfopt._legacy import cluster as legacy
from tfopt.compress import kmeans, records
from tfopt.compress.batchnorm import reestimate_inplace
from tfopt.compress.prune import SkippedLayer
from tfopt.compress.select import LayerRule, layer_predicate
from tfopt.errors import InvalidArgumentError, InvalidTypeError, UnsupportedModelError

INITS = kmeans.INITS
_REASONS = {
    "DepthwiseConv2D": "depthwise kernels are not clustered (few weights, large accuracy loss)",
    "BatchNormalization": "normalization parameters are not clustered",
    "LayerNormalization": "normalization parameters are not clustered",
    "Normalization": "preprocessing statistics are not clustered",
    "MultiHeadAttention": "attention layers are not clustered by tfopt yet",
    "LSTM": "recurrent layers are not clustered by tfopt yet",
    "GRU": "recurrent layers are not clustered by tfopt yet",
    "SimpleRNN": "recurrent layers are not clustered by tfopt yet",
}
# Clustered model -> the layers `cluster` skipped (lost on save; then rebuilt from the wrappers).


@dataclasses.dataclass
class ClusteredLayer:
    """One clustered layer: its kernel size, centroids and the unique values it holds now."""

    name: str
    class_name: str
    num_weights: int
    num_clusters: int
    per_channel: bool
    max_unique: int  # whole kernel, or the largest count over output channels when per_channel
    preserve_sparsity: bool = False


@dataclasses.dataclass
class ClusteringSummary:
    """What `cluster` wrapped, how many unique values each kernel holds, and what it skipped."""

    layers: list[ClusteredLayer]
    skipped: list[SkippedLayer]

    def summary(self) -> str:
        lines = [f"{'layer':<32} {'class':<18} {'weights':>9} {'clusters':>8} {'unique':>7}"]
        for l in self.layers:
            scope = "/ch" if l.per_channel else ""
            zero = "+0" if l.preserve_sparsity else ""
            lines.append(
                f"{l.name:<32} {l.class_name:<18} {l.num_weights:>9} {l.num_clusters:>4}{zero:<2}{scope:<3}{l.max_unique:>6}"
            )
        lines.append(f"clustered weights: {sum(l.num_weights for l in self.layers)}")
        lines.extend(f"skipped {s.name} ({s.class_name}): {s.reason}" for s in self.skipped)
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "layers": [dataclasses.asdict(l) for l in self.layers],
            "skipped": [dataclasses.asdict(s) for s in self.skipped],
        }


def cluster(
    model: Any,
    *,
    num_clusters: int = 16,
    init: str = "kmeans++",
    per_channel: bool = False,
    preserve_sparsity: bool = False,
    include: LayerRule = None,
    exclude: LayerRule = None,
    batchnorm_data: Any = None,
):
    """Wraps a model for weight clustering; fine-tune it with your own training code.

    Each selected kernel is computed from `num_clusters` shared values
    (centroids), initialised by `init` and refined by k-means on the trained
    weights. A Keras 3 model comes back as a Keras 3 model: compile it with a
    `keras.optimizers` object, fine-tune briefly (Adam 1e-4, 1-2 epochs) with
    `fit` (callbacks welcome) or a `tf.GradientTape` loop, save it with
    `model.save("x.keras")`, then call `tfopt.strip`. The centroids train; each
    weight's assignment to a centroid is fixed when the model is wrapped. A
    tf_keras model goes through tfmot and comes back as tf_keras (tfmot also
    re-assigns weights to centroids while training).

    By default (`include=None`) every Conv/Dense-like layer is clustered except
    the first and the last weight layer (few weights, most sensitive) when the
    model has at least three. Layers that cannot be clustered (DepthwiseConv2D,
    normalization, custom layers, kernels with no more weights than clusters,
    ...) are skipped and listed by `clustering_summary`.

    To distribute the fine-tune, call `cluster` inside `strategy.scope()` so the
    new variables belong to the strategy.

    Args:
        model: a built Keras 3 or tf_keras functional or Sequential model. Not modified.
        num_clusters: shared values per kernel (per output channel with
            `per_channel`); an integer >= 2. Defaults to `16`.
        init: centroid initialisation: `"kmeans++"`, `"linear"`, `"density"` or
            `"random"`. Defaults to `"kmeans++"`.
        per_channel: one set of centroids per output channel of Conv, Dense and
            SeparableConv kernels (Embedding and, on tf_keras, all but Conv2D are
            clustered whole); matches int8 per-channel quantization. Defaults to `False`.
        preserve_sparsity: keep exact zeros (e.g. of a pruned, stripped model)
            at exactly 0; the `num_clusters` centroids share the non-zero
            weights, so a kernel holds at most `num_clusters` values plus 0.
            Defaults to `False`.
        include: layers to cluster: a name, `"re:<regex>"`, a list of those, or
            a callable `layer -> bool`. Defaults to `None` (see above).
        exclude: layers never to cluster, same forms. Defaults to `None`.
        batchnorm_data: inputs (array, list of arrays, or a batched
            `tf.data.Dataset`) used to re-estimate BatchNorm statistics for the
            clustered kernels, so the model is accurate before fine-tuning.
            Defaults to `None` (statistics kept).

    Returns:
        A new, uncompiled model of the input's Keras flavour with clustering wrappers.

    Raises:
        ValueError: for bad options, a rule matching no layer, or nothing left to cluster.
        TypeError: for options of the wrong type, or something that is not a Keras model.
        NotImplementedError: for subclassed models.

    Example:

    >>> import keras, numpy as np
    >>> from tfopt.compress.cluster import cluster, strip_clustering
    >>> m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(32), keras.layers.Dense(2)])
    >>> c = cluster(m, num_clusters=4, include="re:dense.*")
    >>> c.compile(keras.optimizers.Adam(1e-3), "mse")
    >>> _ = c.fit(np.ones((8, 8)), np.ones((8, 2)), verbose=0)
    >>> len(np.unique(strip_clustering(c).layers[0].get_weights()[0]))
    4
    """
    if isinstance(num_clusters, bool) or not isinstance(num_clusters, (int, np.integer)) or num_clusters < 2:
        raise InvalidArgumentError(
            f"num_clusters must be an integer >= 2. Received: num_clusters={num_clusters!r}. "
            "Use 16 (4-bit indices) or 8 for most models."
        )
    if init not in INITS:
        raise InvalidArgumentError(f"init must be one of {INITS}. Received: init={init!r}.")
    for label, value in (("per_channel", per_channel), ("preserve_sparsity", preserve_sparsity)):
        if not isinstance(value, bool):
            raise InvalidTypeError(f"{label} must be True or False. Received: {label}={value!r}.")
    flavor = _keras.keras_flavor(model)
    if type(model).__name__ not in ("Functional", "Sequential"):
        raise UnsupportedModelError(
            f"Cannot cluster subclassed model {model.name!r} ({type(model).__name__}): clustering rebuilds the "
            "model layer by layer, which needs a functional or Sequential model. Rebuild it with the functional "
            "API (or cluster a functional sub-model it holds)."
        )
    chosen, skipped = _select_layers(model, include, exclude, int(num_clusters), per_channel, flavor)
    if not chosen:
        raise InvalidArgumentError(
            f"No layer of {model.name!r} can be clustered with these options; skipped: "
            + "; ".join(f"{s.name}: {s.reason}" for s in skipped)
            + ". Pass include= to choose layers, or check that the model has Conv/Dense layers."
        )
    options = {"num_clusters": int(num_clusters), "init": init, "per_channel": per_channel,
               "preserve_sparsity": preserve_sparsity}
    if flavor == _keras.TF_KERAS:
        clustered = legacy.cluster(model, chosen, **options, kmeans=lambda v, k: kmeans.kmeans(v, k, init=init)[0])
    else:
        clustered = _cluster_keras3(model, chosen, options)
    if batchnorm_data is not None:
        reestimate_inplace(clustered, batchnorm_data)
    records.attach(_wrappers(clustered), "cluster", {"skipped": [dataclasses.asdict(s) for s in skipped]})
    return clustered


def has_wrappers(model: Any) -> bool:
    """True when `model` carries clustering wrappers (tfopt's Keras 3 ones or tfmot's).

    >>> import keras
    >>> has_wrappers(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))
    False
    """
    return bool(_wrappers(model))


def strip_clustering(model: Any, *, batchnorm_data: Any = None):
    """Removes clustering wrappers: a plain model of the same Keras flavour holding the clustered kernels.

    Each wrapper is replaced by a copy of the layer it wraps whose kernel holds
    the clustered values: at most `num_clusters` unique values per kernel (per
    output channel with `per_channel`), plus 0 with `preserve_sparsity`. Works on
    a model loaded from a file too. On tf_keras, pruning wrappers are removed as
    well. The result is not compiled.

    Args:
        model: a model returned by `cluster` (or loaded from its saved file). Not modified.
        batchnorm_data: inputs to re-estimate BatchNorm statistics of the
            stripped model from (see `reestimate_batchnorm`); recommended after
            fine-tuning. Defaults to `None`.

    Returns:
        A new model without wrappers (Keras 3 for Keras 3, tf_keras for tf_keras).

    Raises:
        ValueError: if the model has no clustering wrappers.

    Example:

    >>> import keras
    >>> from tfopt.compress.cluster import cluster, strip_clustering
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)])
    >>> [type(l).__name__ for l in strip_clustering(cluster(m, num_clusters=4)).layers]
    ['Dense']
    """
    flavor = _keras.keras_flavor(model)
    if flavor == _keras.TF_KERAS:
        if not any(legacy.is_cluster_wrapper(l) or legacy.is_prune_wrapper(l) for l in model.layers):
            raise _no_wrappers(model)
        plain = legacy.strip(model)
    else:
        if not _wrappers(model):
            raise _no_wrappers(model)
        plain = _strip_keras3(model)
    if batchnorm_data is not None:
        reestimate_inplace(plain, batchnorm_data)
    return plain


def clustering_summary(model: Any) -> ClusteringSummary:
    """Per-layer centroid counts and unique values of a clustered model, and the skipped layers.

    Example:

    >>> import keras
    >>> from tfopt.compress.cluster import cluster, clustering_summary
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)])
    >>> clustering_summary(cluster(m, num_clusters=4)).layers[0].max_unique
    4
    """
    layers = []
    for row in _clustered_rows(model):
        values = row.pop("values")
        axis = row.pop("axis")
        unique = kmeans.unique_counts(values, axis=axis if row["per_channel"] else None)
        layers.append(ClusteredLayer(num_weights=int(values.size), max_unique=int(np.max(unique)), **row))
    record = records.read(model, "cluster")
    skipped = None if record is None else [SkippedLayer(**row) for row in record["skipped"]]
    if skipped is None:
        wrapped = {id(l) for l in _wrappers(model)}
        skipped = [
            SkippedLayer(l.name, type(l).__name__, "not wrapped for clustering")
            for l in model.layers
            if l.weights and id(l) not in wrapped
        ]
    return ClusteringSummary(layers=layers, skipped=list(skipped))


def load_clustered(path: str):
    """Loads a clustered model saved with `model.save(path)`: Keras 3 `.keras`, or tf_keras `.keras` / `.h5`.

    A Keras 3 file needs no scope (plain `keras.models.load_model` works after
    `import tfopt`); tf_keras files are read inside tfmot's `cluster_scope`.
    Fine-tuning can continue; `strip_clustering` works on the result.

    Example:

    >>> import keras, os, tempfile, tfopt
    >>> from tfopt.compress.cluster import cluster, load_clustered, strip_clustering
    >>> layers = [keras.Input((16,)), keras.layers.Dense(64, name="a"), keras.layers.Dense(4, name="out")]
    >>> path = os.path.join(tempfile.mkdtemp(), "clustered.keras")
    >>> cluster(keras.Sequential(layers), num_clusters=8, include=["a"]).save(path)
    >>> [layer.name for layer in strip_clustering(load_clustered(path)).layers]
    ['a', 'out']
    """
    path = str(path)
    if path.endswith(".keras") and _saved_by_keras3(path):
        import keras

        from tfopt.compress import cluster_layer  # noqa: F401 - registers ClusterWeights

        return keras.models.load_model(path)
    return legacy.load(path)


# ---------------------------------------------------------------------------------------------
# Keras 3


def _cluster_keras3(model, chosen: set[str], options: dict):
    import keras

    from tfopt.compress.cluster_layer import ClusterWeights

    work = _keras.clone_model(model)  # the caller's model is never touched

    def wrap(layer):
        return ClusterWeights(layer, **options) if layer.name in chosen else layer

    clustered = keras.models.clone_model(work, clone_function=wrap)
    for wrapper in _wrappers(clustered):
        wrapper.initialize_clusters()
    return clustered


def _strip_keras3(model):
    import keras

    from tfopt.compress.cluster_layer import ClusterWeights

    def unwrap(layer):
        inner = layer.layer if isinstance(layer, ClusterWeights) else layer
        return inner.__class__.from_config(inner.get_config())

    plain = keras.models.clone_model(model, clone_function=unwrap)
    sources = {(l.layer.name if isinstance(l, ClusterWeights) else l.name): l for l in model.layers}
    for layer in plain.layers:
        source = sources.get(layer.name)
        if source is None or not layer.weights:
            continue
        if isinstance(source, ClusterWeights):
            clustered = keras.ops.convert_to_numpy(source.clustered_kernel())
            values = [clustered if w is source.kernel else keras.ops.convert_to_numpy(w) for w in source.layer.weights]
        else:
            values = source.get_weights()
        layer.set_weights(values)
    return plain


def _wrappers(model) -> list:
    """The clustering wrappers among the model's layers (either flavour)."""
    found = []
    for layer in getattr(model, "layers", []):
        if legacy.is_cluster_wrapper(layer):
            found.append(layer)
        elif type(layer).__name__ == "ClusterWeights" and type(layer).__module__ == "tfopt.compress.cluster_layer":
            found.append(layer)
    return found


def _clustered_rows(model) -> list[dict]:
    if _keras.keras_flavor(model) == _keras.TF_KERAS:
        return [{**row, "axis": -1} for row in legacy.clustered_kernels(model)]
    import keras

    rows = []
    for wrapper in _wrappers(model):
        rows.append({
            "name": wrapper.layer.name,
            "class_name": type(wrapper.layer).__name__,
            "values": keras.ops.convert_to_numpy(wrapper.clustered_kernel()),
            "num_clusters": wrapper.num_clusters,
            "per_channel": wrapper.per_channel,
            "preserve_sparsity": wrapper.preserve_sparsity,
            "axis": wrapper.channel_axis,
        })
    return rows


def _saved_by_keras3(path: str) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            version = json.loads(archive.read("metadata.json")).get("keras_version", "")
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return False
    return str(version).startswith("3")


def _no_wrappers(model) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"Model {model.name!r} has no clustering wrappers, so there is nothing to strip. Pass the model "
        "returned by tfopt.cluster (or loaded from the file it was saved to)."
    )


# ---------------------------------------------------------------------------------------------
# Layer selection


def _select_layers(model, include: LayerRule, exclude: LayerRule, num_clusters: int, per_channel: bool, flavor: str):
    layers = [layer for layer in model.layers if layer.weights]
    include_rule = layer_predicate(include, model.layers, "include")
    exclude_rule = layer_predicate(exclude, model.layers, "exclude")

    def unsupported(layer):
        return _unsupported_reason(layer, flavor)

    supported = [layer for layer in layers if unsupported(layer) is None]
    protected = {supported[0].name, supported[-1].name} if include is None and len(supported) >= 3 else set()
    chosen, skipped = set(), []
    for layer in layers:
        reason = unsupported(layer)
        if reason is None and include_rule is not None and not include_rule(layer):
            reason = "not matched by include"
        if reason is None and exclude_rule is not None and exclude_rule(layer):
            reason = "matched by exclude"
        if reason is None and layer.name in protected:
            reason = "first/last weight layer, kept unclustered by default (pass include= to cluster it)"
        if reason is None:
            reason = _too_small(layer, num_clusters, per_channel, flavor)
        if reason is None:
            chosen.add(layer.name)
        else:
            skipped.append(SkippedLayer(layer.name, type(layer).__name__, reason))
    return chosen, skipped


def _unsupported_reason(layer, flavor: str) -> str | None:
    name = type(layer).__name__
    if name in _REASONS:
        return _REASONS[name]
    if hasattr(layer, "layers"):
        return "nested model: cluster it separately"
    if flavor == _keras.TF_KERAS:
        return legacy.unsupported_reason(layer)
    from tfopt.compress.cluster_layer import kernel_spec

    if hasattr(layer, "layer") and hasattr(layer, "get_config") and type(layer).__module__.startswith("tfopt."):
        return "already wrapped by tfopt: strip it first (then cluster with preserve_sparsity=True after pruning)"
    if kernel_spec(layer) is None:
        return "layer type not supported by tfopt clustering (Dense, Conv, ConvTranspose, SeparableConv, Embedding)"
    if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
        return "LoRA or quantized layers are not clustered"
    return None


def _too_small(layer, num_clusters: int, per_channel: bool, flavor: str) -> str | None:
    if flavor == _keras.TF_KERAS:
        kernel = legacy.kernel_of(layer)
        axis = -1 if per_channel and type(layer).__name__ == "Conv2D" else None
    else:
        from tfopt.compress.cluster_layer import kernel_spec

        attribute, axis = kernel_spec(layer)
        kernel = getattr(layer, attribute, None)
        axis = axis if per_channel else None
    if kernel is None:
        return None
    size = int(np.prod(kernel.shape))
    if axis is not None:
        size //= int(kernel.shape[axis])
        if size <= num_clusters:
            return f"{size} weights per channel for {num_clusters} clusters: nothing to share"
    if size <= num_clusters:
        return f"{size} weights for {num_clusters} clusters: nothing to share"
    return None


def handle(model: Any, config: Any, context: Any):
    """`tfopt.apply`'s handler for a `ClusterConfig` (the recipe's inputs re-estimate BatchNorm statistics)."""
    return cluster(
        model, num_clusters=config.num_clusters, init=config.init, per_channel=config.per_channel,
        preserve_sparsity=config.preserve_sparsity, include=config.include, exclude=config.exclude,
        batchnorm_data=context.x,
    )
