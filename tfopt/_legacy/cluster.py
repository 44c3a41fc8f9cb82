"""Weight clustering of tf_keras (Keras 2) models with tfmot's `ClusterWeights`.

`tfopt.compress.cluster` sends tf_keras models here and Keras 3 models to its
own wrapper. What lives here is the tfmot plumbing: which tf_keras layers tfmot
can cluster, wrapping them, writing k-means centroids into tfmot's wrappers
(tfmot itself stops at the initialisation), the clustered kernel a wrapper
computes, and a strip that rebuilds the model from its config (tfmot's own
`strip_clustering` fails on TFOpLambda layers). The k-means maths is passed in
by the caller (it lives in `tfopt.compress.kmeans`), so this module depends on
nothing above the Keras seam.

tfmot pins one of its `number_of_clusters` centroids to 0 with
`preserve_sparsity`; tfopt asks it for `num_clusters + 1` then, so that on
both Keras flavours `num_clusters` shared values go to the non-zero weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from tfopt import _keras
from tfopt._legacy import import_tfmot, tf_keras_module
from tfopt.errors import InvalidArgumentError, UnsupportedModelError

TFMOT_INIT = {"kmeans++": "KMEANS_PLUS_PLUS", "linear": "LINEAR", "density": "DENSITY_BASED", "random": "RANDOM"}
# tf_keras layer classes whose kernels tfmot clusters with the plain ClusterWeights wrapper.
CLUSTERABLE = {
    "Conv1D", "Conv1DTranspose", "Conv2D", "Conv2DTranspose", "Conv3D", "Conv3DTranspose",
    "SeparableConv1D", "SeparableConv2D", "Dense", "Embedding", "LocallyConnected1D", "LocallyConnected2D",
}
KERNEL = {"SeparableConv1D": "pointwise_kernel", "SeparableConv2D": "pointwise_kernel", "Embedding": "embeddings"}

# k-means on a 1-D array: (values, num_clusters) -> sorted centroids.
KMeans = Callable[[np.ndarray, int], np.ndarray]


def unsupported_reason(layer) -> str | None:
    """Why tfmot cannot cluster this tf_keras layer, or `None` when it can."""
    if is_prune_wrapper(layer):
        return "carries a pruning wrapper: strip it first, then cluster with preserve_sparsity=True"
    if hasattr(layer, "get_clusterable_weights"):
        return None
    if type(layer).__name__ in CLUSTERABLE and type(layer).__module__.startswith("tf_keras"):
        return None
    return "layer type not supported by tfmot clustering (custom layers can subclass tfmot's ClusterableLayer)"


def kernel_of(layer):
    """The tf_keras layer's clustered weight (kernel, pointwise kernel or embeddings), or `None`."""
    return getattr(layer, KERNEL.get(type(layer).__name__, "kernel"), None)


def cluster(
    model: Any,
    chosen: set[str],
    *,
    num_clusters: int,
    init: str,
    per_channel: bool,
    preserve_sparsity: bool,
    kmeans: KMeans,
):
    """A tf_keras copy of `model` with the `chosen` layers wrapped by tfmot, centroids refined by `kmeans`."""
    if type(model).__name__ not in ("Functional", "Sequential"):
        raise UnsupportedModelError(
            f"Cannot cluster subclassed tf_keras model {model.name!r} ({type(model).__name__}): tfmot needs a "
            "functional or Sequential model. Rebuild it with the functional API, or build it with Keras 3 "
            "(tfopt clusters Keras 3 functional and Sequential models natively)."
        )
    tfmot = import_tfmot()
    api = tfmot.clustering.keras
    options = {
        "number_of_clusters": int(num_clusters) + (1 if preserve_sparsity else 0),
        "cluster_centroids_init": getattr(api.CentroidInitialization, TFMOT_INIT[init]),
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
            # left unclustered. tfopt's own size check already passed: wrap it directly.
            wrapped = _cluster_weights_class()(layer, **options)
        return wrapped

    work = _keras.clone_model(model)
    clustered = tf_keras_module().models.clone_model(work, clone_function=wrap)
    for wrapper in cluster_wrappers(clustered):
        _refine_centroids(wrapper, kmeans)
    return clustered


def clustered_kernels(model) -> list[dict]:
    """One row per clustered weight: name, class, values as the next forward pass computes them, options."""
    rows = []
    for wrapper in cluster_wrappers(model):
        names = list(wrapper.original_clusterable_weights)
        for name in names:
            preserve = bool(wrapper.preserve_sparsity)
            rows.append({
                "name": wrapper.layer.name if len(names) == 1 else f"{wrapper.layer.name}/{name}",
                "class_name": type(wrapper.layer).__name__,
                "values": clustered_value(wrapper, name),
                "num_clusters": int(wrapper.number_of_clusters) - (1 if preserve else 0),
                "per_channel": bool(wrapper.cluster_per_channel),
                "preserve_sparsity": preserve,
            })
    return rows


def strip(model: Any):
    """A plain tf_keras model holding the clustered kernels (pruning wrappers are removed too).

    The model is rebuilt from its config with each wrapper replaced by the layer
    it wraps, then every kernel gets its clustered values (pruned kernels their
    mask). Unlike tfmot's `strip_clustering`, this works with TFOpLambda layers.
    """
    tf_keras = tf_keras_module()
    config = _unwrapped_config(model.get_config())
    klass = tf_keras.Sequential if type(model).__name__ == "Sequential" else tf_keras.Model
    try:
        plain = klass.from_config(config)
    except (ValueError, TypeError, KeyError) as err:
        raise InvalidArgumentError(
            f"Could not rebuild {model.name!r} without its wrappers: {err}. Custom layers must be "
            "registered (tf_keras.saving.register_keras_serializable) so their config can be loaded."
        ) from err
    by_name = {(l.layer.name if is_cluster_wrapper(l) or is_prune_wrapper(l) else l.name): l for l in model.layers}
    for layer in plain.layers:
        source = by_name.get(layer.name)
        if source is not None and layer.weights:
            layer.set_weights(_stripped_weights(source))
    return plain


def custom_objects() -> dict:
    """The classes a tf_keras file with tfmot clustering wrappers refers to (what `cluster_scope` provides)."""
    import_tfmot()
    return {"ClusterWeights": _cluster_weights_class()}


def load(path: str):
    """Loads a tf_keras model with tfmot clustering wrappers (`.keras` or `.h5`), safely."""
    from tfopt import _keras

    return _keras.load_model(path, custom_objects=custom_objects())


def is_cluster_wrapper(layer) -> bool:
    return hasattr(layer, "cluster_centroids") and hasattr(layer, "original_clusterable_weights")


def is_prune_wrapper(layer) -> bool:
    return hasattr(layer, "pruning_vars") and hasattr(layer, "pruning_step") and hasattr(layer, "layer")


def cluster_wrappers(model) -> list:
    return [layer for layer in model.layers if is_cluster_wrapper(layer)]


def clustered_value(wrapper, name: str) -> np.ndarray:
    """The clustered kernel as the wrapper's next forward pass computes it.

    `update_clustered_weights_associations` is what every call of the wrapper
    runs first: it re-pins the zero centroid (preserve_sparsity) and refreshes
    the centroid assignments from the current weights.
    """
    wrapper.update_clustered_weights_associations()
    return np.asarray(wrapper.get_weight_from_layer(name))


# ---------------------------------------------------------------------------------------------
# Plumbing


def _cluster_weights_class():
    from tensorflow_model_optimization.python.core.clustering.keras import cluster_wrapper

    return cluster_wrapper.ClusterWeights


def _refine_centroids(wrapper, kmeans: KMeans) -> None:
    """Replaces tfmot's initial centroids with k-means centroids of the trained weights."""
    for name, variable in wrapper.cluster_centroids.items():
        weights = np.asarray(wrapper.original_clusterable_weights[name].numpy(), dtype=np.float64)
        current = variable.numpy()
        if wrapper.cluster_per_channel:
            channels = np.moveaxis(weights, 1 if wrapper.data_format == "channels_first" else -1, 0)
            refined = np.stack([_refined(c, row, wrapper.preserve_sparsity, kmeans) for c, row in zip(channels, current)])
        else:
            refined = _refined(weights, current, wrapper.preserve_sparsity, kmeans)
        variable.assign(refined.astype(current.dtype))


def _refined(weights: np.ndarray, current: np.ndarray, preserve_sparsity: bool, kmeans: KMeans) -> np.ndarray:
    """k-means centroids with the layout tfmot expects (with preserve_sparsity: negatives, 0, positives)."""
    if not preserve_sparsity:
        return _kmeans_or_keep(weights.reshape(-1), current, kmeans)
    negatives, positives = int(np.sum(current < 0)), int(np.sum(current > 0))
    flat = weights.reshape(-1)
    low = _kmeans_or_keep(flat[flat < 0], current[current < 0], kmeans)
    high = _kmeans_or_keep(flat[flat > 0], current[current > 0], kmeans)
    if low.size != negatives or high.size != positives or current.size != negatives + positives + 1:
        return current
    return np.concatenate([low, [0.0], high])


def _kmeans_or_keep(values: np.ndarray, current: np.ndarray, kmeans: KMeans) -> np.ndarray:
    k = current.size
    if k == 0 or values.size == 0:
        return current
    if k == 1:
        return np.array([values.mean()])
    return kmeans(values, k)


def _stripped_weights(source) -> list[np.ndarray]:
    if is_cluster_wrapper(source):
        values = source.layer.get_weights()  # the layer's weights without the clustered ones
        for position, name in sorted(source.position_original_weights.items()):
            values.insert(position, clustered_value(source, name))
        return values
    if is_prune_wrapper(source):
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
