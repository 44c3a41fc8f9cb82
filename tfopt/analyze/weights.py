"""Statistics of weight arrays (pure numpy): sparsity, m:n patterns, unique values.

Shared by the readers in `tfopt.analyze` and by the techniques in `tfopt.compress`.
"""

from __future__ import annotations

import numpy as np
from tfopt.errors import InvalidArgumentError


def m_by_n_holds(weights: np.ndarray, m: int = 2, n: int = 4, *, axis: int = -2) -> bool:
    """True when every `n` consecutive weights along `axis` hold at least `m` zeros.

    A trailing block shorter than `n` may hold at most `n - m` non-zeros. Use
    `axis=-2` for Keras kernels and `axis=-1` for TFLite weights (`(out, ..., in)`).

    >>> m_by_n_holds(np.array([[0.0], [3.0], [0.0], [1.0]]), 2, 4)
    True
    """
    _check_m_n(m, n)
    moved = np.moveaxis(np.asarray(weights) != 0, axis, -1)
    length = moved.shape[-1]
    padded_length = -(-length // n) * n
    pad = np.zeros(moved.shape[:-1] + (padded_length - length,), dtype=bool)
    blocks = np.concatenate([moved, pad], axis=-1).reshape(moved.shape[:-1] + (-1, n))
    return bool(np.all(blocks.sum(axis=-1) <= n - m))


def sparsity_of(weights: np.ndarray) -> float:
    """Fraction of exact zeros in an array.

    >>> sparsity_of(np.array([0.0, 1.0, 0.0, 2.0]))
    0.5
    """
    weights = np.asarray(weights)
    return float(np.mean(weights == 0)) if weights.size else 0.0


def unique_counts(values: np.ndarray, *, axis: int | None = None) -> int | np.ndarray:
    """Number of distinct values in the whole array, or in each slice along `axis`.

    >>> unique_counts(np.array([[1, 1], [2, 3]]), axis=0).tolist()
    [1, 2]
    """
    array = np.asarray(values)
    if axis is None:
        return int(np.unique(array).size)
    moved = np.moveaxis(array, axis, 0).reshape(array.shape[axis], -1)
    return np.asarray([np.unique(row).size for row in moved], dtype=np.int64)


def _check_m_n(m: int, n: int) -> None:
    if not (isinstance(m, (int, np.integer)) and isinstance(n, (int, np.integer)) and 0 < m < n):
        raise InvalidArgumentError(
            f"m:n sparsity needs integers 0 < m < n (m zeros in every n weights), e.g. (2, 4). Received: m={m}, n={n}."
        )
