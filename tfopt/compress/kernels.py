"""The one table of Keras layers whose weights tfopt's techniques compress, and where their kernel is.

Pruning, clustering and the search's per-layer targets read it; each technique
narrows it where it must (with the reason in its own module): clustering does
not take `EinsumDense`, 2:4 pruning only `Conv2D` and `Dense`. Depthwise
kernels are left out on purpose (few weights, very sensitive: pruning and
clustering them costs accuracy for little size). QAT fake-quantizes every
kernel of a layer, depthwise ones included, so it keeps its own list
(`qat_layers.KERNELS`). Plain Python: no Keras import.
"""

from __future__ import annotations

from typing import Any

# Keras layer class name -> (attribute of the kernel compressed, its output-channel axis or None).
KERNEL_LAYERS: dict[str, tuple[str, int | None]] = {
    "Dense": ("kernel", -1),
    "EinsumDense": ("kernel", None),
    "Conv1D": ("kernel", -1),
    "Conv2D": ("kernel", -1),
    "Conv3D": ("kernel", -1),
    "Conv1DTranspose": ("kernel", -2),
    "Conv2DTranspose": ("kernel", -2),
    "Conv3DTranspose": ("kernel", -2),
    "SeparableConv1D": ("pointwise_kernel", -1),
    "SeparableConv2D": ("pointwise_kernel", -1),
    "Embedding": ("embeddings", None),  # no output channels: handled whole
}


def kernel_of(layer: Any) -> Any:
    """The kernel variable a technique compresses in `layer`, or `None` (a layer not in `KERNEL_LAYERS`)."""
    spec = KERNEL_LAYERS.get(type(layer).__name__)
    return None if spec is None else getattr(layer, spec[0], None)
