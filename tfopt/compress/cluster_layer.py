"""`ClusterWeights`: the Keras 3 layer wrapper that trains a layer with a clustered kernel.

The wrapper keeps its state in three variables, saved with the model:

- `centroids` (trainable, float, shape `(channels, num_clusters)`, one row
  unless `per_channel`): the shared values;
- `assignments` (non-trainable, int32, shaped like the kernel): the index of
  each weight's centroid within its row;
- `nonzero_mask` (non-trainable, only with `preserve_sparsity`): 1 where the
  kernel was non-zero when it was clustered.

Each call gathers the kernel from the centroids
(`kernel = centroids[row, assignments]`, and 0 wherever `nonzero_mask` is 0)
and runs the wrapped layer with it through `keras.StatelessScope`, so the
gradient of every weight reaches its centroid (a centroid moves by the sum of
its members' gradients). The assignments are chosen once, by k-means, when
`tfopt.cluster` wraps the layer, and stay fixed while training: the number of
unique values is then a property of the state, never of a training step, and
every replica of a distribution strategy computes the same kernel. The wrapped
layer's own kernel stays in the model (non-trainable, not used) so that the
original weights are still at hand.

The class is registered as `"tfopt>ClusterWeights"`, so a saved model loads
with `keras.models.load_model` after `import tfopt.compress.cluster_layer`,
with no scope.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from tfopt.compress.records import CarriesRecord
from tfopt.compress import kmeans
from tfopt.compress.kernels import KERNEL_LAYERS
from tfopt.errors import InvalidArgumentError, InvalidTypeError

# Kernel attribute and output-channel axis of each clusterable Keras 3 layer class: the shared table
# (`tfopt.compress.kernels`) without EinsumDense, whose output axis depends on its equation.
KERNELS: dict[type, tuple[str, int | None]] = {
    getattr(keras.layers, name): spec for name, spec in KERNEL_LAYERS.items() if name != "EinsumDense"
}


def kernel_spec(layer) -> tuple[str, int | None] | None:
    """`(kernel attribute, output-channel axis)` for a clusterable layer, else `None`."""
    for klass, spec in KERNELS.items():
        if isinstance(layer, klass):
            return spec
    return None


@keras.saving.register_keras_serializable(package="tfopt")
class ClusterWeights(CarriesRecord, keras.layers.Wrapper):
    """Trains a Dense / Conv / SeparableConv / Embedding layer with a clustered kernel.

    Built by `tfopt.cluster`; you rarely make one yourself. A hand-made
    wrapper starts with all centroids at 0 until `initialize_clusters()` runs
    k-means on the wrapped layer's kernel.

    Args:
        layer: the Keras 3 layer to wrap (see `KERNELS` for the classes).
        num_clusters: centroids per kernel (per output channel with
            `per_channel`). Defaults to `16`.
        init: centroid initialisation for `initialize_clusters`: `"kmeans++"`,
            `"linear"`, `"density"` or `"random"`. Defaults to `"kmeans++"`.
        per_channel: one set of centroids per output channel. Defaults to `False`.
        preserve_sparsity: keep the kernel's zeros at exactly 0; the
            `num_clusters` centroids then share the non-zero weights. Defaults to `False`.
        **kwargs: `keras.layers.Layer` arguments (`name`, ...).

    Example:

    >>> import keras, numpy as np
    >>> from tfopt.compress.cluster_layer import ClusterWeights
    >>> wrapper = ClusterWeights(keras.layers.Dense(8), num_clusters=4)
    >>> wrapper.build((None, 16)); wrapper.initialize_clusters()
    >>> int(np.unique(keras.ops.convert_to_numpy(wrapper.clustered_kernel())).size)
    4
    """

    def __init__(
        self,
        layer,
        *,
        num_clusters: int = 16,
        init: str = "kmeans++",
        per_channel: bool = False,
        preserve_sparsity: bool = False,
        **kwargs,
    ):
        spec = kernel_spec(layer)
        if spec is None:
            raise InvalidTypeError(
                f"ClusterWeights wraps Keras 3 {', '.join(k.__name__ for k in KERNELS)} layers. "
                f"Received: {layer!r} ({type(layer).__name__})."
            )
        if isinstance(num_clusters, bool) or not isinstance(num_clusters, (int, np.integer)) or num_clusters < 2:
            raise InvalidArgumentError(f"num_clusters must be an integer >= 2. Received: num_clusters={num_clusters!r}.")
        if init not in kmeans.INITS:
            raise InvalidArgumentError(f"init must be one of {kmeans.INITS}. Received: init={init!r}.")
        kwargs.setdefault("name", f"cluster_{layer.name}")
        super().__init__(layer, **kwargs)
        self.num_clusters = int(num_clusters)
        self.init = init
        self.kernel_name, axis = spec
        self.per_channel = bool(per_channel) and axis is not None
        self.channel_axis = axis
        self.preserve_sparsity = bool(preserve_sparsity)

    # --- state -------------------------------------------------------------------------------

    @property
    def kernel(self):
        """The wrapped layer's own kernel variable (the weights before clustering)."""
        return getattr(self.layer, self.kernel_name)

    def build(self, input_shape=None):
        super().build(input_shape)
        kernel = self.kernel
        shape = tuple(int(d) for d in kernel.shape)
        rows = shape[self.channel_axis] if self.per_channel else 1
        self.centroids = self.add_weight(
            name="centroids", shape=(rows, self.num_clusters), initializer="zeros", dtype=kernel.dtype
        )
        self.assignments = self.add_weight(
            name="assignments", shape=shape, initializer="zeros", dtype="int32", trainable=False
        )
        self.nonzero_mask = None
        if self.preserve_sparsity:
            self.nonzero_mask = self.add_weight(
                name="nonzero_mask", shape=shape, initializer="ones", dtype=kernel.dtype, trainable=False
            )
        # Row offset of each weight in the flattened centroids (0 everywhere without per_channel).
        offsets = np.zeros(shape, dtype=np.int32)
        if self.per_channel:
            along = [1] * len(shape)
            along[self.channel_axis] = rows
            offsets = offsets + (np.arange(rows, dtype=np.int32) * self.num_clusters).reshape(along)
        self._offsets = offsets
        kernel.trainable = False  # the clustered kernel is trained through the centroids
        self.built = True

    @property
    def trainable(self):
        return keras.layers.Wrapper.trainable.fget(self)

    @trainable.setter
    def trainable(self, value):
        keras.layers.Wrapper.trainable.fset(self, value)
        if getattr(self, "built", False):
            self.kernel.trainable = False  # `model.trainable = True` must not revive the unused kernel

    def initialize_clusters(self) -> None:
        """Runs k-means on the wrapped layer's kernel and writes centroids, assignments and mask."""
        values = ops.convert_to_numpy(self.kernel)
        centroids, labels, nonzero = kmeans.cluster_state(
            values,
            self.num_clusters,
            init=self.init,
            axis=self.channel_axis if self.per_channel else None,
            preserve_zeros=self.preserve_sparsity,
        )
        self.centroids.assign(centroids.astype(self.centroids.dtype))
        self.assignments.assign(labels)
        if self.nonzero_mask is not None:
            self.nonzero_mask.assign(nonzero.astype(self.nonzero_mask.dtype))

    def clustered_kernel(self):
        """The kernel the layer computes with: each weight's centroid (and 0 where masked)."""
        flat = ops.reshape(self.centroids, (-1,))
        index = self.assignments if not self.per_channel else self.assignments + self._offsets
        kernel = ops.take(flat, index)
        if self.nonzero_mask is not None:
            kernel = ops.where(ops.greater(self.nonzero_mask, 0), kernel, ops.zeros_like(kernel))
        return kernel

    # --- forward ------------------------------------------------------------------------------

    def call(self, inputs, *args, **kwargs):
        kernel = self.kernel
        # Every variable of the wrapped layer keeps its current value (so an outer
        # `stateless_call` still applies); only the kernel is swapped for the clustered one.
        mapping = [(v, v.value) for v in self.layer.variables if v is not kernel]
        mapping.append((kernel, self.clustered_kernel()))
        with keras.StatelessScope(state_mapping=mapping):
            return self.layer(inputs, *args, **kwargs)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "num_clusters": self.num_clusters,
            "init": self.init,
            "per_channel": self.per_channel,
            "preserve_sparsity": self.preserve_sparsity,
        }
