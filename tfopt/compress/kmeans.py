"""One-dimensional k-means for weight clustering, as plain numpy functions (no Keras, no training).

Weight clustering replaces every value of a kernel by the nearest of
`num_clusters` shared values (centroids). These functions choose the initial
centroids the four ways tfmot offers (`"kmeans++"`, `"linear"`, `"density"`,
`"random"`), refine them with Lloyd iterations, assign values to centroids,
and count unique values (per tensor or per channel) the way a checker of a
clustered model or a .tflite needs. `cluster_state` gives the centroids,
assignments and zero mask that tfopt's Keras 3 wrapper
(`tfopt.compress.cluster_layer`) trains; on tf_keras, `tfopt.compress.cluster`
writes `kmeans` centroids into tfmot's wrappers. The tests pin the maths here.
"""

from __future__ import annotations

import numpy as np

from tfopt.analyze.weights import unique_counts  # noqa: F401 - shared
from tfopt.errors import InvalidArgumentError

INITS = ("kmeans++", "linear", "density", "random")


def init_centroids(values: np.ndarray, num_clusters: int, *, init: str = "kmeans++", seed: int = 0) -> np.ndarray:
    """Initial centroids for clustering `values` into `num_clusters`, sorted ascending.

    - `"linear"`: evenly spaced between the smallest and largest value.
    - `"density"`: at evenly spaced quantiles (dense regions get more centroids).
    - `"random"`: uniform between the smallest and largest value.
    - `"kmeans++"`: D² sampling (Arthur & Vassilvitskii, 2007), seeded.

    Fewer distinct values than `num_clusters` give those values (and repeats
    of the largest), so no centroid is ever empty by construction.

    >>> init_centroids(np.array([0.0, 1.0, 2.0, 3.0]), 4, init="linear").tolist()
    [0.0, 1.0, 2.0, 3.0]
    """
    values = _flat(values)
    _check_k(num_clusters)
    if init not in INITS:
        raise InvalidArgumentError(f"init must be one of {INITS}. Received: init={init!r}.")
    distinct = np.unique(values)
    if distinct.size <= num_clusters:
        return np.concatenate([distinct, np.full(num_clusters - distinct.size, distinct[-1])])
    low, high = float(distinct[0]), float(distinct[-1])
    rng = np.random.default_rng(seed)
    if init == "linear":
        centroids = np.linspace(low, high, num_clusters)
    elif init == "density":
        centroids = np.quantile(values, np.linspace(0.0, 1.0, num_clusters))
    elif init == "random":
        centroids = rng.uniform(low, high, num_clusters)
    else:
        centroids = _kmeans_plus_plus(values, num_clusters, rng)
    return np.sort(centroids.astype(np.float64))


def _kmeans_plus_plus(values: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    centroids = [values[rng.integers(values.size)]]
    distance = (values - centroids[0]) ** 2
    for _ in range(1, k):
        total = distance.sum()
        if total <= 0:
            break
        chosen = values[rng.choice(values.size, p=distance / total)]
        centroids.append(chosen)
        distance = np.minimum(distance, (values - chosen) ** 2)
    while len(centroids) < k:  # only when all values already sit on a centroid
        centroids.append(centroids[-1])
    return np.asarray(centroids, dtype=np.float64)


def assign(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid for each value (ties go to the lower centroid), shaped like `values`.

    >>> assign(np.array([0.1, 0.9, 0.5]), np.array([0.0, 1.0])).tolist()
    [0, 1, 0]
    """
    values = np.asarray(values, dtype=np.float64)
    centroids = np.asarray(centroids, dtype=np.float64).reshape(-1)
    order = np.argsort(centroids, kind="stable")
    ordered = centroids[order]
    midpoints = (ordered[1:] + ordered[:-1]) / 2.0
    position = np.searchsorted(midpoints, values, side="left")
    return order[position]


def kmeans(
    values: np.ndarray,
    num_clusters: int,
    *,
    init: str = "kmeans++",
    max_iter: int = 30,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means on the flattened `values`: returns `(centroids, labels)`.

    Centroids are sorted; `labels` has the shape of `values`. An empty cluster
    keeps its previous centroid. Stops early when the centroids stop moving.

    >>> c, labels = kmeans(np.array([0.0, 0.1, 1.0, 1.1]), 2, init="linear")
    >>> np.round(c, 2).tolist(), labels.tolist()
    ([0.05, 1.05], [0, 0, 1, 1])
    """
    array = np.asarray(values, dtype=np.float64)
    flat = _flat(array)
    centroids = init_centroids(flat, num_clusters, init=init, seed=seed)
    # In 1-D each cluster is a run of the sorted values between two midpoints, so an
    # iteration costs O(k log n) with prefix sums instead of O(n).
    ordered = np.sort(flat)
    prefix = np.concatenate([[0.0], np.cumsum(ordered)])
    for _ in range(max_iter):
        midpoints = (centroids[1:] + centroids[:-1]) / 2.0
        bounds = np.concatenate([[0], np.searchsorted(ordered, midpoints, side="right"), [ordered.size]])
        counts = np.diff(bounds)
        sums = prefix[bounds[1:]] - prefix[bounds[:-1]]
        updated = np.sort(np.where(counts > 0, sums / np.maximum(counts, 1), centroids))
        converged = np.allclose(updated, centroids, rtol=0.0, atol=1e-12)
        centroids = updated
        if converged:
            break
    labels = assign(flat, centroids)
    return centroids, labels.reshape(array.shape)


def cluster_array(
    values: np.ndarray,
    num_clusters: int,
    *,
    init: str = "kmeans++",
    axis: int | None = None,
    preserve_zeros: bool = False,
    seed: int = 0,
) -> np.ndarray:
    """`values` with each element replaced by its k-means centroid: at most `num_clusters` unique values.

    With `axis`, each slice along that axis (e.g. each output channel, axis -1
    of a Conv2D kernel) is clustered on its own. With `preserve_zeros`, exact
    zeros stay zero and the other values share `num_clusters - 1` centroids.

    >>> w = np.random.default_rng(0).normal(size=(3, 3, 8, 16))
    >>> int(np.unique(cluster_array(w, 16)).size)
    16
    """
    array = np.asarray(values)
    if axis is not None:
        moved = np.moveaxis(array, axis, 0)
        out = np.stack(
            [cluster_array(s, num_clusters, init=init, preserve_zeros=preserve_zeros, seed=seed) for s in moved]
        )
        return np.moveaxis(out, 0, axis).astype(array.dtype)
    if preserve_zeros:
        _check_k(num_clusters, minimum=3)
        nonzero = array != 0
        out = np.zeros_like(array)
        if nonzero.any():
            centroids, labels = kmeans(array[nonzero], num_clusters - 1, init=init, seed=seed)
            out[nonzero] = centroids[labels]
        return out
    centroids, labels = kmeans(array, num_clusters, init=init, seed=seed)
    return centroids[labels].astype(array.dtype)


def cluster_state(
    values: np.ndarray,
    num_clusters: int,
    *,
    init: str = "kmeans++",
    axis: int | None = None,
    preserve_zeros: bool = False,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The state a clustering wrapper trains: `(centroids, labels, nonzero)`.

    `centroids` has shape `(channels, num_clusters)` (one row when `axis` is
    `None`, else one row per slice along `axis`); `labels` (int32, shaped like
    `values`) is the index of each value's centroid within its row; `nonzero`
    is `values != 0`. With `preserve_zeros`, k-means sees only the non-zero
    values, so all `num_clusters` centroids go to them and the zeros stay
    outside (`clustered = where(nonzero, centroids[row, labels], 0)`).

    >>> c, labels, nonzero = cluster_state(np.array([[0.0, 1.0], [0.0, 3.0], [2.0, 4.0]]), 2, axis=-1,
    ...                                    init="linear", preserve_zeros=True)
    >>> c.tolist(), labels[:, 1].tolist(), nonzero[:, 0].tolist()
    ([[2.0, 2.0], [1.0, 3.5]], [0, 1, 1], [False, False, True])
    """
    array = np.asarray(values, dtype=np.float64)
    _check_k(num_clusters)
    nonzero = array != 0
    rows = [array] if axis is None else list(np.moveaxis(array, axis, 0))
    masks = [nonzero] if axis is None else list(np.moveaxis(nonzero, axis, 0))
    centroids = np.zeros((len(rows), num_clusters))
    labels = np.zeros((len(rows),) + rows[0].shape, dtype=np.int32)
    for index, (row, mask) in enumerate(zip(rows, masks)):
        chosen = row[mask] if preserve_zeros else row.reshape(-1)
        if chosen.size == 0:
            continue  # an all-zero slice: every value stays 0
        centroids[index], found = kmeans(chosen, num_clusters, init=init, seed=seed)
        if preserve_zeros:
            labels[index][mask] = found
        else:
            labels[index] = found.reshape(row.shape)
    labels = labels[0] if axis is None else np.moveaxis(labels, 0, axis)
    return centroids, labels.astype(np.int32), nonzero


def symmetric_int8(values: np.ndarray, *, axis: int | None = None) -> np.ndarray:
    """Symmetric int8 quantization as the TFLite converter does it for weights.

    `q = round(w / s)` with `s = max|w| / 127` over the tensor (`axis=None`) or
    over each slice along `axis` (per-channel). The map is monotone within a
    scale, so a slice with k unique floats has at most k unique int8 values:
    per-channel quantization keeps "k values per channel", per-tensor keeps
    "k values per tensor".

    >>> symmetric_int8(np.array([-1.0, 0.5, 1.0])).tolist()
    [-127, 64, 127]
    """
    array = np.asarray(values, dtype=np.float64)
    if axis is None:
        scale = np.max(np.abs(array)) / 127.0
    else:
        reduce = tuple(i for i in range(array.ndim) if i != axis % array.ndim)
        scale = np.max(np.abs(array), axis=reduce, keepdims=True) / 127.0
    scale = np.where(scale > 0, scale, 1.0)
    return np.clip(np.round(array / scale), -127, 127).astype(np.int8)


def clustering_error(values: np.ndarray, clustered: np.ndarray) -> float:
    """Relative squared error `||w - c(w)||² / ||w||²` of a clustering (0 means exact).

    >>> clustering_error(np.array([1.0, 2.0]), np.array([1.0, 2.0]))
    0.0
    """
    values = np.asarray(values, dtype=np.float64)
    norm = float(np.sum(values**2))
    return float(np.sum((values - np.asarray(clustered, dtype=np.float64)) ** 2) / norm) if norm else 0.0


def _flat(values: np.ndarray) -> np.ndarray:
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    if flat.size == 0:
        raise InvalidArgumentError("Cannot cluster an empty array. Received: an array with 0 elements.")
    if not np.all(np.isfinite(flat)):
        raise InvalidArgumentError("Cannot cluster values with NaN or infinity. Check the weights for divergence.")
    return flat


def _check_k(num_clusters: int, *, minimum: int = 2) -> None:
    if isinstance(num_clusters, bool) or not isinstance(num_clusters, (int, np.integer)) or num_clusters < minimum:
        raise InvalidArgumentError(
            f"num_clusters must be an integer >= {minimum}. Received: num_clusters={num_clusters!r}."
        )
