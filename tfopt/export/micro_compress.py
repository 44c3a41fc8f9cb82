"""Which TFLite Micro compression each weight tensor gets: pure choice logic on arrays, no runtime.

TFLite Micro decodes compressed constant tensors at run time (a `TFLM_DECODE`
operator before the consumer). Its writer
(`tflite_micro.tensorflow.lite.micro.compression`) stores a tensor as
look-up-table (LUT) indices of 1-7 bits, with one value table for the tensor or
one per channel along the first or last axis. This module decides, for one
tensor at a time, whether that form is smaller than the plain tensor, from the
tensor's values and quantization alone:

- `bits_for(n)`: the index width that addresses `n` distinct values.
- `lut_bytes(...)`: the flash a LUT form takes (indices + value tables + the
  decode metadata + the bookkeeping the writer adds to the flatbuffer).
- `choose_compression(values, ...)`: the LUT form that TFLite Micro decodes
  correctly for the tensor's quantization, or `None` when it would not shrink
  the tensor.

The writer's Huffman and pruning methods are stubs in the installed
`tflite-micro` (they raise "not yet implemented"), so LUT is the only scheme
offered; a sparse tensor compresses only when it also has few distinct values
per channel (pruned then clustered).

>>> import numpy as np
>>> from tfopt.export.micro_compress import bits_for, choose_compression
>>> bits_for(16), bits_for(17), bits_for(1)
(4, 5, 1)
>>> w = np.repeat(np.arange(-8, 8, dtype=np.int8)[None], 64, axis=0).repeat(8, axis=1)  # 64 x 128, 16 values
>>> choice = choose_compression(w, channel_axis=0)  # a per-channel int8 kernel: one table per output channel
>>> choice.mode, choice.bits, choice.estimated_bytes < w.nbytes
('per-channel', 4, True)
>>> choose_compression(np.arange(-128, 128, dtype=np.int8).reshape(16, 16), channel_axis=0) is None
True
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

# LUT limits of TFLite Micro's DECODE (lut.py: index widths 1-7 bits; value tables of at most 128 entries).
MAX_INDEX_BITS = 7
MAX_TABLE_ENTRIES = 128
# The decode common metadata (DCM) that starts every ancillary tensor.
DCM_BYTES = 16
# Flatbuffer bookkeeping per compressed tensor, measured on tflite-micro's writer (2026-10 build: 256-272
# bytes): the ancillary tensor, the decoded tensor, the DECODE operator and its buffer entries, alignment.
TENSOR_OVERHEAD_BYTES = 288
# Per-channel quantization parameters copied onto the decoded tensor: a float32 scale and an int64 zero point.
PER_SCALE_BYTES = 12


@dataclasses.dataclass(frozen=True)
class CompressionChoice:
    """The form chosen for one tensor: `mode` is "per-tensor" or "per-channel" (along `axis`), `bits` per index."""

    mode: str
    axis: int | None
    bits: int
    num_values: int  # distinct values in the largest table
    original_bytes: int
    estimated_bytes: int

    @property
    def saved_bytes(self) -> int:
        """Bytes of flash the choice saves (estimate)."""
        return self.original_bytes - self.estimated_bytes


def bits_for(num_values: int) -> int:
    """The LUT index width (bits) that addresses `num_values` distinct values; at least 1.

    >>> [bits_for(n) for n in (1, 2, 3, 4, 5, 128)]
    [1, 1, 2, 2, 3, 7]
    """
    if num_values < 1:
        raise ValueError(f"num_values must be >= 1. Received: num_values={num_values}.")
    return max(1, math.ceil(math.log2(num_values)))


def distinct_per_channel(values: np.ndarray, axis: int | None) -> list[int]:
    """The number of distinct values of the whole tensor (`axis=None`) or of each slice along `axis`.

    >>> distinct_per_channel(np.array([[1, 1, 2], [3, 4, 5]], np.int8), 0)
    [2, 3]
    """
    values = np.asarray(values)
    if axis is None:
        return [int(np.unique(values).size)]
    return [int(np.unique(s).size) for s in np.moveaxis(values, axis, 0)]


def lut_bytes(
    num_elements: int, *, itemsize: int, bits: int, num_tables: int, table_entries: int, num_scales: int = 1
) -> int:
    """Flash of one tensor stored as LUT indices: packed indices + value tables + DCM + bookkeeping.

    `table_entries` is the largest table's length (the writer pads every table to it);
    `num_scales` the quantization scales the decoded tensor carries (> 1 for per-channel int8).

    >>> lut_bytes(1024, itemsize=1, bits=4, num_tables=1, table_entries=16)
    832
    """
    indices = -(-num_elements * bits // 8)
    tables = num_tables * table_entries * itemsize
    scales = PER_SCALE_BYTES * num_scales if num_scales > 1 else 0
    return indices + tables + DCM_BYTES + TENSOR_OVERHEAD_BYTES + scales


def choose_compression(values: np.ndarray, *, channel_axis: int | None = None) -> CompressionChoice | None:
    """The LUT form of a constant tensor, or `None` when it would not be smaller than the plain tensor.

    TFLite Micro's DECODE takes its channels from the decoded tensor's
    quantization, not from the table layout: a per-channel quantized tensor
    needs one table per channel along its quantized dimension, and any other
    tensor one table (measured: a per-tensor table on a per-channel int8 kernel
    decodes to wrong values). So the layout is fixed by `channel_axis`, and the
    choice is whether it pays off.

    Args:
        values: the tensor's values with their stored dtype (int8 weights, int32 bias, ...).
        channel_axis: the quantized dimension of a per-channel quantized tensor
            (it must be the first or the last axis), or `None` for one table.
            Defaults to `None`.

    Returns:
        A `CompressionChoice`, or `None` (keep the tensor as it is).
    """
    values = np.asarray(values)
    if values.size == 0:
        return None
    if channel_axis is not None and channel_axis not in (0, values.ndim - 1):
        return None  # the decoder supports the first and the last axis only
    counts = distinct_per_channel(values, channel_axis)
    widest = max(counts)
    if widest > MAX_TABLE_ENTRIES:
        return None
    bits = bits_for(widest)
    size = lut_bytes(
        int(values.size),
        itemsize=values.itemsize,
        bits=bits,
        num_tables=len(counts),
        table_entries=widest,
        num_scales=len(counts) if channel_axis is not None else 1,
    )
    if size >= values.nbytes:
        return None
    mode = "per-tensor" if channel_axis is None else "per-channel"
    return CompressionChoice(mode, channel_axis, bits, widest, int(values.nbytes), size)


def requantize_int4(values: np.ndarray, scales: np.ndarray, *, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 weights re-quantized to 4 bits ([-7, 7]) per channel along `axis` (or per tensor).

    Returns `(int8 array holding values in [-7, 7], new scales)`: each channel's
    largest magnitude maps to 7 and its scale grows by the same factor.

    >>> q, s = requantize_int4(np.array([[127, -64, 0], [14, 7, -14]], np.int8), np.array([0.5, 1.0]), axis=0)
    >>> q.tolist(), s.tolist()
    ([[7, -4, 0], [7, 4, -7]], [9.071428571428571, 2.0])
    """
    q = np.asarray(values).astype(np.int32)
    moved = q.reshape(1, -1) if axis is None else np.moveaxis(q, axis, 0).reshape(q.shape[axis], -1)
    peak = np.maximum(np.abs(moved).max(axis=1), 1).astype(np.float64)
    q4 = np.clip(np.round(moved * 7.0 / peak[:, None]), -7, 7).astype(np.int8)
    new_scales = np.asarray(scales, dtype=np.float64).reshape(-1) * peak / 7.0
    if axis is None:
        return q4.reshape(q.shape), new_scales
    shaped = q4.reshape((q.shape[axis],) + tuple(np.delete(q.shape, axis)))
    return np.moveaxis(shaped, 0, axis), new_scales
