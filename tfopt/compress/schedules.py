"""Pruning schedules and masks as plain numpy functions (no Keras, no training).

These functions say, for a training step, which sparsity a layer should have
and whether its mask is recomputed, and compute magnitude masks and m:n masks.
`tfopt.compress.prune` maps them onto tfmot's schedule objects; the tests
check both agree, so the maths here is the contract.

Steps are counted as tfmot counts them: the first training batch is step 1.
"""

from __future__ import annotations

import math

import numpy as np

from tfopt.analyze.weights import _check_m_n, m_by_n_holds, sparsity_of  # noqa: F401 - shared
from tfopt.errors import InvalidArgumentError

SCHEDULES = ("polynomial", "constant")
# About this many mask updates over a polynomial ramp when `frequency` is not given.
DEFAULT_NUM_UPDATES = 10
# Length of the polynomial ramp when `end_step` is not given.
DEFAULT_RAMP_STEPS = 200


def polynomial_sparsity(
    step: int, *, final_sparsity: float, begin_step: int, end_step: int, initial_sparsity: float = 0.0, power: int = 3
) -> float:
    """Sparsity of the polynomial (cubic by default) ramp at `step`.

    `s(t) = s_f + (s_i - s_f) * (1 - p) ** power` with
    `p = clip((step - begin_step) / (end_step - begin_step), 0, 1)`: pruning is
    fast at first and slows down as the target nears (Zhu & Gupta, 2017).

    >>> polynomial_sparsity(100, final_sparsity=0.8, begin_step=0, end_step=100)
    0.8
    """
    span = max(end_step - begin_step, 1)
    progress = min(1.0, max(0.0, (step - begin_step) / span))
    return float(final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - progress) ** power)


def constant_sparsity(step: int, *, target_sparsity: float, begin_step: int) -> float:
    """Sparsity of the constant schedule: 0 before `begin_step`, then the target.

    >>> constant_sparsity(5, target_sparsity=0.5, begin_step=1)
    0.5
    """
    return float(target_sparsity) if step >= begin_step else 0.0


def mask_update_steps(begin_step: int, end_step: int, frequency: int) -> np.ndarray:
    """Steps at which masks are recomputed: `begin_step, begin_step + frequency, ... <= end_step`.

    >>> int(mask_update_steps(1, 201, 20)[-1])
    201
    """
    if frequency < 1:
        raise InvalidArgumentError(f"frequency must be >= 1. Received: frequency={frequency}.")
    return np.arange(begin_step, end_step + 1, frequency, dtype=np.int64)


def choose_frequency(begin_step: int, end_step: int, *, num_updates: int = DEFAULT_NUM_UPDATES) -> int:
    """A mask-update frequency that divides the ramp, so the last update lands on `end_step`.

    Picks the divisor of `end_step - begin_step` closest to `span / num_updates`.
    tfmot's default `frequency=100` silently leaves 0% sparsity when a
    fine-tune is shorter than 100 steps; a divisor of the ramp cannot miss.

    >>> choose_frequency(1, 201)
    20
    """
    span = end_step - begin_step
    if span <= 0:
        return 1
    wanted = max(1.0, span / num_updates)
    divisors = [d for d in range(1, span + 1) if span % d == 0]
    return int(min(divisors, key=lambda d: (abs(math.log(d / wanted)), -d)))


def magnitude_mask(weights: np.ndarray, sparsity: float) -> np.ndarray:
    """A 0/1 mask keeping the `round(size * (1 - sparsity))` largest-magnitude weights (at least one).

    Ties at the threshold are kept, as in tfmot.

    >>> magnitude_mask(np.array([0.1, -3.0, 2.0, 0.5]), 0.5).tolist()
    [0.0, 1.0, 1.0, 0.0]
    """
    if not 0.0 <= sparsity < 1.0:
        raise InvalidArgumentError(f"sparsity must be in [0, 1). Received: sparsity={sparsity}.")
    weights = np.asarray(weights)
    magnitude = np.abs(weights).reshape(-1)
    keep = max(int(np.round(magnitude.size * (1.0 - sparsity))), 1)
    threshold = np.sort(magnitude)[::-1][keep - 1]
    return (np.abs(weights) >= threshold).astype(weights.dtype if weights.dtype.kind == "f" else np.float32)


def m_by_n_mask(weights: np.ndarray, m: int = 2, n: int = 4, *, axis: int = -2) -> np.ndarray:
    """A 0/1 mask with at least `m` zeros in every `n` consecutive weights along `axis`.

    The default axis is the input-channel axis of Keras kernels (Dense
    `(in, out)`, Conv2D `(h, w, in, out)`), which becomes the last, contiguous
    axis in TFLite, where 2:4 sparse kernels expect the pattern. A trailing
    block shorter than `n` keeps its `n - m` largest weights.

    >>> m_by_n_mask(np.array([[1.0], [-4.0], [2.0], [0.5]]), 2, 4).ravel().tolist()
    [0.0, 1.0, 1.0, 0.0]
    """
    _check_m_n(m, n)
    weights = np.asarray(weights)
    moved = np.moveaxis(np.abs(weights), axis, -1)
    length = moved.shape[-1]
    padded_length = -(-length // n) * n
    pad = np.zeros(moved.shape[:-1] + (padded_length - length,), dtype=moved.dtype)
    blocks = np.concatenate([moved, pad - 1.0], axis=-1).reshape(moved.shape[:-1] + (-1, n))
    order = np.argsort(-blocks, axis=-1, kind="stable")
    keep = np.zeros(blocks.shape, dtype=bool)
    np.put_along_axis(keep, order[..., : n - m], True, axis=-1)
    keep = keep.reshape(moved.shape[:-1] + (padded_length,))[..., :length]
    return np.moveaxis(keep, -1, axis).astype(np.float32)
