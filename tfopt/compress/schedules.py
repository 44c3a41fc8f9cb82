"""Pruning schedules and masks as plain numpy functions (no Keras, no training).

These functions say, for a training step, which sparsity a layer should have
and whether its mask is recomputed, and compute magnitude masks and m:n masks.
`PruningSchedule` holds one resolved schedule (validated, frequency chosen);
the Keras 3 wrapper (`tfopt.compress.prune_layer`) computes the same values in
the graph and the tf_keras path maps them onto tfmot's schedule objects; the
tests check all three agree, so the maths here is the contract.

Steps are counted as tfmot counts them: the first training batch is step 1.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

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


def ramp_end_step(train_steps: int, *, begin_step: int = 0) -> int:
    """The `end_step` of a polynomial ramp fitted into `train_steps` of training.

    The target is reached two thirds of the way in, so the last third
    recovers at full sparsity. `tfopt.apply`, `tfopt optimize` and the
    `tfopt prune` command all fit their ramps with it.

    >>> ramp_end_step(300)
    200
    """
    return int(begin_step) + max(1, (2 * int(train_steps)) // 3)


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


@dataclasses.dataclass(frozen=True)
class PruningSchedule:
    """One resolved pruning schedule: when masks are recomputed, and to which sparsity.

    `kind` is `"polynomial"` (cubic ramp from 0 to `target_sparsity` between
    `begin_step` and `end_step`) or `"constant"` (`target_sparsity` from
    `begin_step` on; `end_step=-1` means no last update). Masks are recomputed
    at `begin_step, begin_step + frequency, ...` up to `end_step`. Build it with
    `make_schedule`, which validates and chooses the frequency.

    >>> s = make_schedule(0.5, "polynomial", begin_step=0, end_step=10)
    >>> s.sparsity(10), s.updates_at(10), s.updates_at(11)
    (0.5, True, False)
    """

    kind: str
    target_sparsity: float
    begin_step: int
    end_step: int
    frequency: int

    def sparsity(self, step: int) -> float:
        """Sparsity the masks get when they are recomputed at `step`."""
        if self.kind == "constant":
            return constant_sparsity(step, target_sparsity=self.target_sparsity, begin_step=self.begin_step)
        return polynomial_sparsity(
            step, final_sparsity=self.target_sparsity, begin_step=self.begin_step, end_step=self.end_step
        )

    def updates_at(self, step: int) -> bool:
        """True when masks are recomputed at training step `step`."""
        if step < self.begin_step or (self.end_step >= 0 and step > self.end_step):
            return False
        return (step - self.begin_step) % self.frequency == 0

    @property
    def last_step(self) -> int:
        """The step of the last mask update (`begin_step` for an open constant schedule)."""
        return self.end_step if self.end_step >= 0 else self.begin_step

    def to_dict(self) -> dict:
        """Plain values (what the Keras wrapper saves in its config)."""
        return dataclasses.asdict(self)


def _check_step(name: str, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0):
        raise InvalidArgumentError(f"{name} must be a non-negative integer or None. Received: {name}={value!r}.")


def make_schedule(
    target_sparsity: float,
    schedule: str = "polynomial",
    *,
    begin_step: int = 0,
    end_step: int | None = None,
    frequency: int | None = None,
    m_by_n: tuple[int, int] | None = None,
) -> PruningSchedule:
    """Validates the `prune` schedule options and resolves them into a `PruningSchedule`.

    `begin_step` 0 and 1 both mean the first batch. A polynomial ramp without
    `end_step` lasts `DEFAULT_RAMP_STEPS`; without `frequency` it gets a divisor
    of the ramp (about `DEFAULT_NUM_UPDATES` updates), so the last update lands
    on `end_step` and a short fine-tune cannot end at 0% (tfmot's
    `frequency=100` trap). A `frequency` longer than the ramp is an error; one
    that does not divide it moves `end_step` to the next update, with a warning.
    With `m_by_n`, the mask is set once at `begin_step` and kept.

    Raises:
        ValueError: negative steps, `end_step < begin_step`, an unknown schedule,
            or a frequency longer than the ramp.

    >>> make_schedule(0.8, begin_step=0, end_step=None)
    PruningSchedule(kind='polynomial', target_sparsity=0.8, begin_step=1, end_step=201, frequency=20)
    """
    if schedule not in SCHEDULES:
        raise InvalidArgumentError(f"schedule must be one of {SCHEDULES}. Received: schedule={schedule!r}.")
    for name, value in (("begin_step", begin_step), ("end_step", end_step), ("frequency", frequency)):
        _check_step(name, value)
    if frequency is not None and frequency < 1:
        raise InvalidArgumentError(f"frequency must be >= 1 or None. Received: frequency={frequency}.")
    begin = max(int(begin_step), 1)
    if m_by_n is not None:
        return PruningSchedule("constant", m_by_n[0] / m_by_n[1], begin, begin, 1)
    if schedule == "constant":
        end = -1 if end_step is None else max(int(end_step), begin)
        return PruningSchedule("constant", float(target_sparsity), begin, end, int(frequency or 100))
    end = begin + DEFAULT_RAMP_STEPS if end_step is None else int(end_step)
    if end < begin:
        raise InvalidArgumentError(
            f"end_step must be >= begin_step. Received: begin_step={begin_step}, end_step={end_step}."
        )
    span = end - begin
    if span == 0:
        return PruningSchedule("constant", float(target_sparsity), begin, end, 1)
    if frequency is None:
        frequency = choose_frequency(begin, end)
    elif frequency > span:
        raise InvalidArgumentError(
            f"frequency={frequency} is longer than the pruning ramp ({begin}..{end}): the target sparsity would "
            f"never be reached. Use frequency <= {span}, or leave frequency=None to choose one."
        )
    elif span % frequency:
        new_end = begin + -(-span // frequency) * frequency
        warnings.warn(
            f"end_step={end} is not begin_step + a multiple of frequency={frequency}; the last mask update "
            f"would miss the target. Using end_step={new_end}.",
            stacklevel=3,
        )
        end = new_end
    return PruningSchedule("polynomial", float(target_sparsity), begin, end, int(frequency))
