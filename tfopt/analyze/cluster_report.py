"""Unique values per kernel in a Keras model or a .tflite, and the gzip size: the check for weight clustering.

A clustered float kernel holds at most `num_clusters` distinct values; after
int8 conversion at most that many per output channel (the converter scales
each channel on its own; a per-tensor scale keeps the bound for the whole
tensor, because rounding within one scale is monotone). The file is read with
LiteRT's own schema (`ai_edge_litert`); nothing here imports `tfopt.deploy`.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
from typing import Any

import numpy as np

from tfopt import _keras
from tfopt.analyze import weights as kmeans
from tfopt.errors import InvalidArgumentError, InvalidTypeError


@dataclasses.dataclass
class KernelValues:
    """Unique values of one kernel: over the whole tensor and the most in any output channel."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    num_unique: int
    max_unique_per_channel: int
    channel_axis: int


@dataclasses.dataclass
class ClusterReport:
    """Unique values per kernel of a Keras model or a .tflite, and its gzip size (see `cluster_report`)."""

    source: str  # "keras" or "tflite"
    kernels: list[KernelValues]
    gzip_bytes: int
    reference_gzip_bytes: int | None = None
    num_clusters: int | None = None

    @property
    def gzip_ratio(self) -> float | None:
        """gzip size relative to the reference (below 1 means smaller)."""
        return self.gzip_bytes / self.reference_gzip_bytes if self.reference_gzip_bytes else None

    def within(self, num_clusters: int, *, per_channel: bool = False) -> list[str]:
        """Names of the kernels holding at most `num_clusters` values (per channel if asked)."""
        return [
            k.name for k in self.kernels
            if (k.max_unique_per_channel if per_channel else k.num_unique) <= num_clusters
        ]

    def summary(self) -> str:
        lines = [f"{'kernel':<48} {'shape':<20} {'dtype':<8} {'unique':>7} {'max/ch':>7}"]
        for k in self.kernels:
            lines.append(
                f"{k.name[-48:]:<48} {list(k.shape)!s:<20} {k.dtype:<8} {k.num_unique:>7} {k.max_unique_per_channel:>7}"
            )
        size = f"gzip size ({'.tflite' if self.source == 'tflite' else 'float32 weights'}): {self.gzip_bytes} bytes"
        if self.gzip_ratio is not None:
            size += f", {self.gzip_ratio:.3f}x the reference ({self.reference_gzip_bytes} bytes)"
        lines.append(size)
        if self.num_clusters is not None:
            lines.append(
                f"kernels with <= {self.num_clusters} values: {len(self.within(self.num_clusters))} of "
                f"{len(self.kernels)} per tensor, {len(self.within(self.num_clusters, per_channel=True))} per channel"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["gzip_ratio"] = self.gzip_ratio
        return out


def cluster_report(model_or_tflite: Any, *, reference: Any = None, num_clusters: int | None = None) -> ClusterReport:
    """Counts unique values in every kernel of a stripped model or a .tflite, and the gzip size gained.

    Use it to check that clustering survived stripping and conversion: a
    clustered float kernel holds at most `num_clusters` values; after int8
    conversion it keeps at most that many per output channel (the converter
    quantizes per channel; a per-tensor scale keeps the bound for the whole
    tensor). Weight sharing pays off in a compressed download, so the size
    reported is the gzip size (of the .tflite file, or of a Keras model's
    weights as float32).

    Args:
        model_or_tflite: a plain Keras model (strip wrapped models first), or a
            .tflite as bytes, a path, or a `tfopt.ConversionResult`.
        reference: the same kind of thing before clustering, to compare gzip
            sizes with. Defaults to `None`.
        num_clusters: the count to check kernels against in `summary()`. Defaults to `None`.

    Returns:
        A `ClusterReport`.

    Raises:
        TypeError: for anything else.
        ValueError: for a model that still has clustering wrappers.

    Example:

    >>> import keras, numpy as np
    >>> from tfopt.analyze.cluster_report import cluster_report
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, kernel_initializer="ones")])
    >>> cluster_report(m).kernels[0].num_unique
    1
    """
    source, kernels, gzipped = _report_parts(model_or_tflite)
    reference_gzip = None
    if reference is not None:
        reference_source, _, reference_gzip = _report_parts(reference)
        if reference_source != source:
            raise InvalidTypeError(
                f"reference must be the same kind as the model ({source}). Received: a {reference_source} reference."
            )
    return ClusterReport(source, kernels, gzipped, reference_gzip, num_clusters)


def _report_parts(item: Any) -> tuple[str, list[KernelValues], int]:
    if _keras.is_keras_model(item):
        if any(_is_training_wrapper(l) for l in item.layers):
            raise InvalidArgumentError(
                f"Model {item.name!r} still has clustering or pruning wrappers; call tfopt.strip(model) first."
            )
        kernels, blobs = [], []
        for layer in item.layers:
            for weight in layer.weights:
                values = np.asarray(weight.numpy() if hasattr(weight, "numpy") else weight)
                blobs.append(values.astype(np.float32).tobytes())
                leaf = weight.name.split("/")[-1].split(":")[0]
                if leaf in ("kernel", "pointwise_kernel", "embeddings", "depthwise_kernel") and values.ndim >= 2:
                    axis = -2 if leaf == "depthwise_kernel" else -1
                    kernels.append(_kernel_values(f"{layer.name}/{leaf}", values, str(values.dtype), axis))
        return "keras", kernels, len(gzip.compress(b"".join(blobs), 9))
    content = _tflite_content(item)
    return "tflite", _tflite_kernels(content), len(gzip.compress(content, 9))


def _is_training_wrapper(layer) -> bool:
    """tfmot's clustering / pruning wrappers, or any tfopt wrapper (a layer holding a `.layer`)."""
    if hasattr(layer, "cluster_centroids") or hasattr(layer, "pruning_vars"):
        return True
    return hasattr(layer, "layer") and type(layer).__module__.startswith("tfopt.")


def _kernel_values(name: str, values: np.ndarray, dtype: str, axis: int) -> KernelValues:
    per_channel = kmeans.unique_counts(values, axis=axis)
    return KernelValues(
        name, tuple(int(d) for d in values.shape), dtype, kmeans.unique_counts(values),
        int(np.max(per_channel)), axis % values.ndim,
    )


def _tflite_content(item: Any) -> bytes:
    if isinstance(getattr(item, "tflite", None), (bytes, bytearray)):
        content = bytes(item.tflite)
    elif isinstance(item, (bytes, bytearray)):
        content = bytes(item)
    elif isinstance(item, (str, os.PathLike)) and os.fspath(item).endswith(".tflite"):
        with open(item, "rb") as handle:
            content = handle.read()
    elif isinstance(item, (str, os.PathLike)) and os.fspath(item).endswith((".keras", ".h5")):
        raise InvalidTypeError(f"Load the model first (tfopt's load_model / keras.models.load_model). Received: {item!r}.")
    else:
        raise InvalidTypeError(
            "Expected a plain Keras model, or a .tflite as bytes, a path or a ConversionResult. "
            f"Received: an object of type {type(item).__name__}."
        )
    if content[4:8] != b"TFL3":
        raise InvalidArgumentError("The content is not a TFLite flatbuffer (no 'TFL3' identifier at bytes 4-8).")
    return content


_NUMPY = {"INT8": np.int8, "FLOAT32": np.float32, "FLOAT16": np.float16, "UINT8": np.uint8, "INT16": np.int16}


def _tflite_kernels(content: bytes) -> list[KernelValues]:
    from tfopt.analyze import flatbuffer as fb

    model = fb.read_model(content)
    kernels, seen = [], set()
    for subgraph in model.subgraphs:
        tensors = subgraph.tensors
        for op in subgraph.operators:
            name = fb.op_name(model, op.opcodeIndex)
            index = fb.WEIGHT_OPS.get(name)
            if index is None or len(op.inputs) <= index or op.inputs[index] < 0 or op.inputs[index] in seen:
                continue
            tensor = tensors[op.inputs[index]]
            dtype = fb.type_name(tensor.type)
            data = fb.buffer_bytes(model, tensor)
            if data is None or dtype not in _NUMPY:
                continue  # not a constant (e.g. dequantized float16 weights)
            seen.add(op.inputs[index])
            shape = tuple(int(d) for d in tensor.shape)
            values = data.view(_NUMPY[dtype]).reshape(shape)
            q = tensor.quantization
            if q is not None and q.scale is not None and len(q.scale) > 1:
                axis = int(q.quantizedDimension)
            else:
                axis = 3 if name == "DEPTHWISE_CONV_2D" else 0
            label = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
            kernels.append(_kernel_values(label, values, dtype.lower(), axis))
    return kernels
