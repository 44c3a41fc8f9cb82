"""Weight clustering (weight sharing) on tfmot, for Keras 3 and tf_keras models.

`cluster` returns a tf_keras model whose selected layers are wrapped by
tfmot's `ClusterWeights`: each kernel is drawn from `num_clusters` shared
values (centroids) that train, with the weights, under a plain `model.fit`.
`strip_clustering` returns a plain model in the caller's Keras flavour whose
clustered kernels hold at most `num_clusters` unique values (per channel with
`per_channel=True`). It rebuilds the model from its config and writes the
clustered values itself, so it also works where tfmot's `strip_clustering`
fails (TFOpLambda layers in MobileNetV3 and RegNet), and it removes pruning
wrappers too.

The k-means maths lives in `tfopt.compress.kmeans` (plain numpy), the check of
unique values in a model or .tflite in `tfopt.analyze.cluster_report`, and the
BatchNorm re-estimation in `tfopt.compress.batchnorm`.
"""

from __future__ import annotations

import dataclasses
import warnings
import weakref
from typing import Any

import numpy as np

from tfopt import _keras
from tfopt._legacy import bridge
from tfopt.compress import kmeans
from tfopt.compress.batchnorm import reestimate_inplace
from tfopt.compress.prune import SkippedLayer
from tfopt.compress.select import LayerRule, layer_predicate
from tfopt.errors import InvalidArgumentError, InvalidTypeError, UnsupportedModelError

INITS = kmeans.INITS
_TFMOT_INIT = {"kmeans++": "KMEANS_PLUS_PLUS", "linear": "LINEAR", "density": "DENSITY_BASED", "random": "RANDOM"}
# tf_keras layer classes whose kernels tfmot clusters with the plain ClusterWeights wrapper.
_CLUSTERABLE = {
    "Conv1D", "Conv1DTranspose", "Conv2D", "Conv2DTranspose", "Conv3D", "Conv3DTranspose",
    "SeparableConv1D", "SeparableConv2D", "Dense", "Embedding", "LocallyConnected1D", "LocallyConnected2D",
}
_KERNEL = {"SeparableConv1D": "pointwise_kernel", "SeparableConv2D": "pointwise_kernel", "Embedding": "embeddings"}
_REASONS = {
    "DepthwiseConv2D": "tfmot never clusters depthwise kernels (few weights, large accuracy loss)",
    "BatchNormalization": "normalization parameters are not clustered",
    "LayerNormalization": "normalization parameters are not clustered",
    "Normalization": "preprocessing statistics are not clustered",
    "MultiHeadAttention": "attention layers are not clustered by tfopt yet",
    "LSTM": "recurrent layers are not clustered by tfopt yet",
    "GRU": "recurrent layers are not clustered by tfopt yet",
    "SimpleRNN": "recurrent layers are not clustered by tfopt yet",
}
# Clustered model -> flavour given to `cluster` and the skipped layers.
_PLANS: weakref.WeakKeyDictionary[Any, dict] = weakref.WeakKeyDictionary()


@dataclasses.dataclass
class ClusteredLayer:
    """One clustered layer: its kernel size, centroids and the unique values it holds now."""

    name: str
    class_name: str
    num_weights: int
    num_clusters: int
    per_channel: bool
    max_unique: int  # whole kernel, or the largest count over output channels when per_channel


@dataclasses.dataclass
class ClusteringSummary:
    """What `cluster` wrapped, how many unique values each kernel holds, and what it skipped."""

    layers: list[ClusteredLayer]
    skipped: list[SkippedLayer]

    def summary(self) -> str:
        lines = [f"{'layer':<32} {'class':<18} {'weights':>9} {'clusters':>8} {'unique':>7}"]
        for l in self.layers:
            scope = "/ch" if l.per_channel else ""
            lines.append(f"{l.name:<32} {l.class_name:<18} {l.num_weights:>9} {l.num_clusters:>6}{scope:<2} {l.max_unique:>7}")
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
    """Wraps a model for weight clustering; fine-tune it with a plain `model.fit`.

    Each selected kernel is replaced by `num_clusters` shared values. The
    centroids start from `init` refined by k-means on the trained weights (tfmot
    stops at the initialisation), then train with the weights. The result is a
    tf_keras model (tfmot only speaks tf_keras; a Keras 3 model is converted
    with identical weights): compile it with string identifiers or `tf_keras`
    objects, fine-tune briefly (Adam 1e-4, 1-2 epochs), then call
    `strip_clustering`.

    By default (`include=None`) every Conv/Dense-like layer is clustered except
    the first and the last weight layer (few weights, most sensitive) when the
    model has at least three. Layers tfmot cannot cluster (DepthwiseConv2D,
    custom layers such as ConvNeXt's LayerScale, kernels with no more weights
    than clusters, ...) are skipped and listed by `clustering_summary`.

    Args:
        model: a built Keras 3 or tf_keras functional or Sequential model. Not modified.
        num_clusters: shared values per kernel (per output channel with
            `per_channel`). Defaults to `16`.
        init: centroid initialisation: `"kmeans++"`, `"linear"`, `"density"` or
            `"random"`. Defaults to `"kmeans++"`.
        per_channel: cluster each output channel of Conv2D kernels separately
            (other layers are clustered whole); matches int8 per-channel
            quantization. Defaults to `False`.
        preserve_sparsity: keep exact zeros (e.g. of a pruned, stripped model)
            at zero; one centroid is pinned to 0. Defaults to `False`.
        include: layers to cluster: a name, `"re:<regex>"`, a list of those, or
            a callable `layer -> bool`. Defaults to `None` (see above).
        exclude: layers never to cluster, same forms. Defaults to `None`.
        batchnorm_data: inputs (array, list of arrays, or a batched
            `tf.data.Dataset`) used to re-estimate BatchNorm statistics for the
            clustered kernels, so the model is accurate before fine-tuning.
            Defaults to `None` (statistics kept).

    Returns:
        A new, uncompiled tf_keras model with clustering wrappers.

    Raises:
        ValueError: for bad options, a rule matching no layer, or nothing left to cluster.
        NotImplementedError: for subclassed models.

    Example:

    >>> import keras, numpy as np
    >>> from tfopt.compress.cluster import cluster, strip_clustering
    >>> m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(32), keras.layers.Dense(2)])
    >>> c = cluster(m, num_clusters=4, include="re:dense.*")
    >>> c.compile("adam", "mse"); _ = c.fit(np.ones((8, 8)), np.ones((8, 2)), verbose=0)
    >>> len(np.unique(strip_clustering(c).layers[0].get_weights()[0]))
    4
    """
    minimum = 3 if preserve_sparsity else 2
    if isinstance(num_clusters, bool) or not isinstance(num_clusters, (int, np.integer)) or num_clusters < minimum:
        raise InvalidArgumentError(
            f"num_clusters must be an integer >= {minimum}"
            + (" with preserve_sparsity=True (one centroid is pinned to 0)" if preserve_sparsity else "")
            + f". Received: num_clusters={num_clusters!r}."
        )
    if init not in INITS:
        raise InvalidArgumentError(f"init must be one of {INITS}. Received: init={init!r}.")
    for label, value in (("per_channel", per_channel), ("preserve_sparsity", preserve_sparsity)):
        if not isinstance(value, bool):
            raise InvalidTypeError(f"{label} must be True or False. Received: {label}={value!r}.")
    flavor = _keras.keras_flavor(model)
    if flavor == _keras.TF_KERAS and type(model).__name__ not in ("Functional", "Sequential"):
        raise UnsupportedModelError(
            f"Cannot cluster subclassed tf_keras model {model.name!r} ({type(model).__name__}): tfmot needs a "
            "functional or Sequential model. Rebuild it with the functional API, or build it with Keras 3 "
            "(tfopt traces subclassed Keras 3 models into functional ones)."
        )
    tfmot = _keras.import_tfmot()
    work = bridge.to_tf_keras(model) if flavor == _keras.KERAS3 else _keras.clone_model(model)
    chosen, skipped = _select_layers(work, include, exclude, int(num_clusters), per_channel)
    if not chosen:
        raise InvalidArgumentError(
            f"No layer of {model.name!r} can be clustered with these options; skipped: "
            + "; ".join(f"{s.name}: {s.reason}" for s in skipped)
            + ". Pass include= to choose layers, or check that the model has Conv/Dense layers."
        )
    api = tfmot.clustering.keras
    centroid_init = getattr(api.CentroidInitialization, _TFMOT_INIT[init])

    options = {
        "number_of_clusters": int(num_clusters),
        "cluster_centroids_init": centroid_init,
        "preserve_sparsity": preserve_sparsity,
        "cluster_per_channel": per_channel,
    }

    def wrap(layer):
        if layer.name not in chosen:
            return layer
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have enough weights.*")
            wrapped = api.cluster_weights(layer, **options)
        if wrapped is layer:
            # tfmot counts a Conv2D's channels from its last trainable weight, so with
            # per_channel a Conv2D without bias "has one weight per channel" and is silently
            # left unclustered. Our own size check already passed: wrap it directly.
            wrapped = _cluster_weights_class()(layer, **options)
        return wrapped

    tf_keras = _keras.keras_module(_keras.TF_KERAS)
    clustered = tf_keras.models.clone_model(work, clone_function=wrap)
    for wrapper in _cluster_wrappers(clustered):
        _refine_centroids(wrapper, init)
    if batchnorm_data is not None:
        reestimate_inplace(clustered, batchnorm_data)
    _PLANS[clustered] = {"flavor": flavor, "skipped": skipped}
    return clustered


def strip_clustering(model: Any, *, flavor: str | None = None, batchnorm_data: Any = None):
    """Removes clustering (and pruning) wrappers: a plain model holding the clustered kernels.

    The model is rebuilt from its config with each wrapper replaced by the
    layer it wraps, then every kernel gets its clustered values (pruned
    kernels their mask). Unlike tfmot's `strip_clustering`, this works on
    models with TFOpLambda layers. The result is not compiled.

    Args:
        model: a model returned by `cluster` (or loaded with `load_clustered`). Not modified.
        flavor: `"keras3"` or `"tf_keras"`. Defaults to `None`: the flavour of the
            model given to `cluster` (tf_keras when unknown, e.g. after loading).
        batchnorm_data: inputs to re-estimate BatchNorm statistics of the
            stripped model from (see `reestimate_batchnorm`); recommended after
            fine-tuning. Defaults to `None`.

    Returns:
        A new model without wrappers.

    Raises:
        ValueError: if the model has no clustering or pruning wrappers.

    Example:

    >>> import keras
    >>> from tfopt.compress.cluster import cluster, strip_clustering
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)])
    >>> type(strip_clustering(cluster(m, num_clusters=4))).__module__.split(".")[0]
    'keras'
    """
    sources = [l for l in model.layers if _is_cluster_wrapper(l) or _is_prune_wrapper(l)]
    if not sources:
        raise InvalidArgumentError(
            f"Model {model.name!r} has no clustering or pruning wrappers. Pass the model returned by "
            "tfopt.cluster (or one loaded with load_clustered)."
        )
    target = flavor or _PLANS.get(model, {}).get("flavor", _keras.TF_KERAS)
    if target not in (_keras.KERAS3, _keras.TF_KERAS):
        raise InvalidArgumentError(f"flavor must be 'keras3' or 'tf_keras'. Received: flavor={flavor!r}.")
    tf_keras = _keras.keras_module(_keras.TF_KERAS)
    config = _unwrapped_config(model.get_config())
    klass = tf_keras.Sequential if type(model).__name__ == "Sequential" else tf_keras.Model
    try:
        plain = klass.from_config(config)
    except (ValueError, TypeError, KeyError) as err:
        raise InvalidArgumentError(
            f"Could not rebuild {model.name!r} without its wrappers: {err}. Custom layers must be "
            "registered (keras.saving.register_keras_serializable) so their config can be loaded."
        ) from err
    by_name = {(l.layer.name if _is_cluster_wrapper(l) or _is_prune_wrapper(l) else l.name): l for l in model.layers}
    for layer in plain.layers:
        source = by_name.get(layer.name)
        if source is not None and layer.weights:
            layer.set_weights(_stripped_weights(source))
    if batchnorm_data is not None:
        reestimate_inplace(plain, batchnorm_data)
    return bridge.to_keras3(plain) if target == _keras.KERAS3 else plain


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
    for wrapper in _cluster_wrappers(model):
        for name in wrapper.original_clusterable_weights:
            values = _clustered_value(wrapper, name)
            per_channel = bool(wrapper.cluster_per_channel)
            unique = kmeans.unique_counts(values, axis=-1 if per_channel else None)
            layers.append(
                ClusteredLayer(
                    name=wrapper.layer.name if len(wrapper.original_clusterable_weights) == 1 else f"{wrapper.layer.name}/{name}",
                    class_name=type(wrapper.layer).__name__,
                    num_weights=int(values.size),
                    num_clusters=int(wrapper.number_of_clusters),
                    per_channel=per_channel,
                    max_unique=int(np.max(unique)),
                )
            )
    skipped = _PLANS.get(model, {}).get("skipped")
    if skipped is None:
        skipped = [
            SkippedLayer(l.name, type(l).__name__, "not wrapped for clustering")
            for l in model.layers
            if l.weights and not _is_cluster_wrapper(l)
        ]
    return ClusteringSummary(layers=layers, skipped=list(skipped))


def load_clustered(path: str):
    """Loads a clustered tf_keras model saved with `model.save(path)` (`.keras` or `.h5`).

    Fine-tuning can continue with a plain `fit`; `strip_clustering` works on the result.

    Example:

    >>> import keras, os, tempfile, tfopt
    >>> layers = [keras.Input((16,)), keras.layers.Dense(64, name="a"), keras.layers.Dense(4, name="out")]
    >>> path = os.path.join(tempfile.mkdtemp(), "clustered.keras")
    >>> tfopt.cluster(keras.Sequential(layers), num_clusters=8, include=["a"]).save(path)
    >>> [layer.name for layer in tfopt.strip(tfopt.load_clustered(path)).layers]
    ['a', 'out']
    """
    tfmot = _keras.import_tfmot()
    tf_keras = _keras.keras_module(_keras.TF_KERAS)
    with tfmot.clustering.keras.cluster_scope():
        return tf_keras.models.load_model(path)


# ---------------------------------------------------------------------------------------------
# Plumbing


def _select_layers(model, include: LayerRule, exclude: LayerRule, num_clusters: int, per_channel: bool):
    layers = [layer for layer in model.layers if layer.weights]
    include_rule = layer_predicate(include, model.layers, "include")
    exclude_rule = layer_predicate(exclude, model.layers, "exclude")
    supported = [layer for layer in layers if _unsupported_reason(layer) is None]
    protected = {supported[0].name, supported[-1].name} if include is None and len(supported) >= 3 else set()
    chosen, skipped = set(), []
    for layer in layers:
        reason = _unsupported_reason(layer)
        if reason is None and include_rule is not None and not include_rule(layer):
            reason = "not matched by include"
        if reason is None and exclude_rule is not None and exclude_rule(layer):
            reason = "matched by exclude"
        if reason is None and layer.name in protected:
            reason = "first/last weight layer, kept unclustered by default (pass include= to cluster it)"
        if reason is None:
            reason = _too_small(layer, num_clusters, per_channel)
        if reason is None:
            chosen.add(layer.name)
        else:
            skipped.append(SkippedLayer(layer.name, type(layer).__name__, reason))
    return chosen, skipped


def _unsupported_reason(layer) -> str | None:
    name = type(layer).__name__
    if _is_prune_wrapper(layer):
        return "carries a pruning wrapper: strip it first, then cluster with preserve_sparsity=True"
    if hasattr(layer, "get_clusterable_weights"):
        return None
    if name in _CLUSTERABLE and type(layer).__module__.startswith("tf_keras"):
        return None
    if hasattr(layer, "layers"):
        return "nested model: cluster it separately"
    return _REASONS.get(
        name, "layer type not supported by tfmot clustering (custom layers can subclass tfmot's ClusterableLayer)"
    )


def _too_small(layer, num_clusters: int, per_channel: bool) -> str | None:
    kernel = getattr(layer, _KERNEL.get(type(layer).__name__, "kernel"), None)
    if kernel is None:
        return None
    size = int(np.prod(kernel.shape))
    if per_channel and type(layer).__name__ == "Conv2D":
        size //= int(kernel.shape[-1])
        if size <= num_clusters:
            return f"{size} weights per channel for {num_clusters} clusters: nothing to share"
    if size <= num_clusters:
        return f"{size} weights for {num_clusters} clusters: nothing to share"
    return None


def _cluster_weights_class():
    from tensorflow_model_optimization.python.core.clustering.keras import (
        cluster_wrapper,
    )

    return cluster_wrapper.ClusterWeights


def _refine_centroids(wrapper, init: str) -> None:
    """Replaces tfmot's initial centroids with k-means centroids of the trained weights."""
    for name, variable in wrapper.cluster_centroids.items():
        weights = np.asarray(wrapper.original_clusterable_weights[name].numpy(), dtype=np.float64)
        current = variable.numpy()
        if wrapper.cluster_per_channel:
            channels = np.moveaxis(weights, 1 if wrapper.data_format == "channels_first" else -1, 0)
            refined = np.stack([_refined(c, row, init, wrapper.preserve_sparsity) for c, row in zip(channels, current)])
        else:
            refined = _refined(weights, current, init, wrapper.preserve_sparsity)
        variable.assign(refined.astype(current.dtype))


def _refined(weights: np.ndarray, current: np.ndarray, init: str, preserve_sparsity: bool) -> np.ndarray:
    """k-means centroids with the layout tfmot expects (with preserve_sparsity: negatives, 0, positives)."""
    if not preserve_sparsity:
        return _kmeans_or_keep(weights.reshape(-1), current, init)
    negatives, positives = int(np.sum(current < 0)), int(np.sum(current > 0))
    flat = weights.reshape(-1)
    low = _kmeans_or_keep(flat[flat < 0], current[current < 0], init)
    high = _kmeans_or_keep(flat[flat > 0], current[current > 0], init)
    if low.size != negatives or high.size != positives or current.size != negatives + positives + 1:
        return current
    return np.concatenate([low, [0.0], high])


def _kmeans_or_keep(values: np.ndarray, current: np.ndarray, init: str) -> np.ndarray:
    k = current.size
    if k == 0 or values.size == 0:
        return current
    if k == 1:
        return np.array([values.mean()])
    return kmeans.kmeans(values, k, init=init)[0]


def _clustered_value(wrapper, name: str) -> np.ndarray:
    """The clustered kernel as the wrapper's next forward pass computes it.

    `update_clustered_weights_associations` is what every call of the wrapper
    runs first: it re-pins the zero centroid (preserve_sparsity) and refreshes
    the centroid assignments from the current weights.
    """
    wrapper.update_clustered_weights_associations()
    return np.asarray(wrapper.get_weight_from_layer(name))


def _stripped_weights(source) -> list[np.ndarray]:
    if _is_cluster_wrapper(source):
        values = source.layer.get_weights()  # the layer's weights without the clustered ones
        for position, name in sorted(source.position_original_weights.items()):
            values.insert(position, _clustered_value(source, name))
        return values
    if _is_prune_wrapper(source):
        values = source.get_weights()
        inner = source.layer.weights
        for weight, mask, _ in source.pruning_vars:
            index = next(i for i, w in enumerate(inner) if w is weight)
            values[index] = values[index] * mask.numpy()
        return values
    return source.get_weights()


def _unwrapped_config(config: dict) -> dict:
    """A model config with every clustering / pruning wrapper replaced by the layer it wraps."""
    config = dict(config)
    renames: dict[str, str] = {}
    layers = []
    for entry in config["layers"]:
        if entry.get("class_name") in ("ClusterWeights", "PruneLowMagnitude"):
            inner = dict(entry["config"]["layer"])
            wrapper_name = entry.get("name", entry["config"].get("name"))
            inner_name = inner["config"]["name"]
            renames[wrapper_name] = inner_name
            if "inbound_nodes" in entry:
                inner["name"] = inner_name
                inner["inbound_nodes"] = entry["inbound_nodes"]
            entry = inner
        layers.append(dict(entry))
    for entry in layers:
        if "inbound_nodes" in entry:
            entry["inbound_nodes"] = _renamed(entry["inbound_nodes"], renames)
    config["layers"] = layers
    for key in ("input_layers", "output_layers"):
        if key in config:
            config[key] = _renamed(config[key], renames)
    return config


def _renamed(value: Any, renames: dict) -> Any:
    """Node references `[layer_name, node_index, tensor_index, ...]` with wrapper names replaced."""
    if isinstance(value, list):
        if len(value) >= 3 and isinstance(value[0], str) and value[0] in renames and isinstance(value[1], int):
            return [renames[value[0]], *value[1:]]
        return [_renamed(v, renames) for v in value]
    if isinstance(value, dict):
        return {k: _renamed(v, renames) for k, v in value.items()}
    return value


def _is_cluster_wrapper(layer) -> bool:
    return hasattr(layer, "cluster_centroids") and hasattr(layer, "original_clusterable_weights")


def _is_prune_wrapper(layer) -> bool:
    return hasattr(layer, "pruning_vars") and hasattr(layer, "pruning_step") and hasattr(layer, "layer")


def _cluster_wrappers(model) -> list:
    return [layer for layer in model.layers if _is_cluster_wrapper(layer)]
