"""k-means maths for weight clustering: initialisations, Lloyd iterations, unique counts, int8 bound."""

import numpy as np
import pytest

from tfopt.compress import kmeans

RNG = np.random.default_rng(0)
W = RNG.normal(size=(3, 3, 8, 16))


@pytest.mark.parametrize("init", kmeans.INITS)
def test_init_centroids_sorted_within_range_and_seeded(init):
    c = kmeans.init_centroids(W, 16, init=init, seed=3)
    assert c.shape == (16,) and np.all(np.diff(c) >= 0)
    assert c[0] >= W.min() - 1e-12 and c[-1] <= W.max() + 1e-12
    np.testing.assert_array_equal(c, kmeans.init_centroids(W, 16, init=init, seed=3))


def test_linear_and_density_initialisations():
    values = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 1.0, 10.0])
    np.testing.assert_allclose(kmeans.init_centroids(values, 3, init="linear"), [0.0, 5.0, 10.0])
    # density: the quantiles, so the crowded value 0 gets two centroids
    np.testing.assert_allclose(kmeans.init_centroids(values, 3, init="density"), [0.0, 0.0, 10.0])


def test_fewer_distinct_values_than_clusters():
    c = kmeans.init_centroids(np.array([1.0, 2.0, 2.0]), 4)
    np.testing.assert_array_equal(c, [1.0, 2.0, 2.0, 2.0])


def test_assign_nearest_with_ties_to_lower_and_unsorted_centroids():
    centroids = np.array([1.0, -1.0, 0.0])
    np.testing.assert_array_equal(kmeans.assign(np.array([-0.9, -0.5, 0.2, 0.5, 3.0]), centroids), [1, 1, 2, 2, 0])


def test_kmeans_finds_separated_clusters_and_is_a_fixed_point():
    values = np.concatenate([RNG.normal(-5, 0.1, 100), RNG.normal(0, 0.1, 100), RNG.normal(5, 0.1, 100)])
    centroids, labels = kmeans.kmeans(values, 3, init="random")
    np.testing.assert_allclose(centroids, [values[:100].mean(), values[100:200].mean(), values[200:].mean()])
    # Lloyd's fixed point: every centroid is the mean of its members, every value is nearest to its own centroid
    for j in range(3):
        assert np.isclose(centroids[j], values[labels == j].mean())
    np.testing.assert_array_equal(labels, kmeans.assign(values, centroids))


@pytest.mark.parametrize("init", kmeans.INITS)
def test_lloyd_never_worse_than_its_initialisation(init):
    start = kmeans.init_centroids(W, 16, init=init)
    refined, labels = kmeans.kmeans(W, 16, init=init)
    error_start = kmeans.clustering_error(W, start[kmeans.assign(W, start)])
    error_refined = kmeans.clustering_error(W, refined[labels])
    assert error_refined <= error_start + 1e-12
    assert error_refined < 0.02  # 16 levels on a Gaussian: about 1% relative error


def test_cluster_array_whole_per_channel_and_preserving_zeros():
    assert kmeans.unique_counts(kmeans.cluster_array(W, 16)) == 16
    per_channel = kmeans.cluster_array(W, 4, axis=-1)
    assert per_channel.shape == W.shape
    assert kmeans.unique_counts(per_channel, axis=-1).max() == 4
    assert kmeans.unique_counts(per_channel) > 4
    sparse = np.where(RNG.random(W.shape) < 0.5, 0.0, W)
    kept = kmeans.cluster_array(sparse, 8, preserve_zeros=True)
    np.testing.assert_array_equal(kept == 0, sparse == 0)
    assert kmeans.unique_counts(kept) == 8  # 7 centroids for the non-zeros, plus 0


@pytest.mark.parametrize("axis", [None, -1, 2], ids=["whole", "last-axis", "axis-2"])
def test_cluster_state_rebuilds_cluster_array(axis):
    centroids, labels, nonzero = kmeans.cluster_state(W, 8, axis=axis)
    rows = 1 if axis is None else W.shape[axis]
    assert centroids.shape == (rows, 8) and labels.shape == W.shape and labels.dtype == np.int32
    assert labels.min() >= 0 and labels.max() < 8 and nonzero.all()
    row = np.zeros(W.shape, dtype=int) if axis is None else np.indices(W.shape)[axis % W.ndim]
    np.testing.assert_allclose(centroids[row, labels], kmeans.cluster_array(W, 8, axis=axis))


def test_cluster_state_preserving_zeros_gives_all_centroids_to_the_non_zeros():
    sparse = np.where(RNG.random(W.shape) < 0.6, 0.0, W)
    sparse[..., 0] = 0.0  # an all-zero output channel
    centroids, labels, nonzero = kmeans.cluster_state(sparse, 4, axis=-1, preserve_zeros=True)
    np.testing.assert_array_equal(nonzero, sparse != 0)
    rebuilt = np.where(nonzero, centroids[np.indices(W.shape)[-1], labels], 0.0)
    np.testing.assert_array_equal(rebuilt == 0, sparse == 0)
    assert kmeans.unique_counts(rebuilt[..., 1:], axis=-1).max() == 5  # 4 shared values plus 0
    np.testing.assert_array_equal(centroids[0], 0.0)


def test_unique_counts_per_axis():
    x = np.array([[1, 1, 2], [3, 4, 5]])
    assert kmeans.unique_counts(x) == 5
    np.testing.assert_array_equal(kmeans.unique_counts(x, axis=0), [2, 3])
    np.testing.assert_array_equal(kmeans.unique_counts(x, axis=1), [2, 2, 2])


@pytest.mark.parametrize("axis", [None, -1], ids=["per_tensor", "per_channel"])
def test_int8_rounding_cannot_add_unique_values(axis):
    clustered = kmeans.cluster_array(W, 16, axis=axis)
    q = kmeans.symmetric_int8(clustered, axis=axis)
    assert q.dtype == np.int8 and np.abs(q).max() == 127
    if axis is None:
        assert kmeans.unique_counts(q) <= 16
    else:
        assert kmeans.unique_counts(q, axis=-1).max() <= 16
        # per-channel scales differ, so the whole tensor holds more than 16 int8 values
        assert kmeans.unique_counts(q) > 16


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: kmeans.init_centroids(W, 1), "num_clusters must be an integer >= 2"),
        (lambda: kmeans.init_centroids(W, 4, init="kmeans"), "init must be one of"),
        (lambda: kmeans.kmeans(np.array([]), 2), "empty array"),
        (lambda: kmeans.kmeans(np.array([1.0, np.nan]), 2), "NaN"),
        (lambda: kmeans.cluster_array(W, 2, preserve_zeros=True), ">= 3"),
    ],
    ids=["k1", "bad-init", "empty", "nan", "zeros-k2"],
)
def test_kmeans_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
