"""Schedule and mask maths, tested without Keras or training."""

import numpy as np
import pytest

from tfopt.compress import schedules


@pytest.mark.parametrize(
    "step, expected",
    [(0, 0.0), (1, 0.0), (51, 0.8 * (1 - 0.5**3)), (101, 0.8), (500, 0.8)],
    ids=["before", "begin", "middle", "end", "after"],
)
def test_polynomial_sparsity_values(step, expected):
    got = schedules.polynomial_sparsity(step, final_sparsity=0.8, begin_step=1, end_step=101)
    assert got == pytest.approx(expected)


def test_polynomial_sparsity_is_monotonic():
    values = [schedules.polynomial_sparsity(s, final_sparsity=0.9, begin_step=10, end_step=60) for s in range(80)]
    assert all(b >= a for a, b in zip(values, values[1:]))


def test_constant_sparsity_starts_at_begin_step():
    assert schedules.constant_sparsity(4, target_sparsity=0.5, begin_step=5) == 0.0
    assert schedules.constant_sparsity(5, target_sparsity=0.5, begin_step=5) == 0.5


@pytest.mark.parametrize("begin, end", [(1, 201), (1, 97), (5, 6), (1, 1), (3, 1003)], ids=str)
def test_choose_frequency_lands_on_end_step(begin, end):
    frequency = schedules.choose_frequency(begin, end)
    steps = schedules.mask_update_steps(begin, end, frequency)
    assert steps[0] == begin and steps[-1] == end
    assert 1 <= frequency <= max(end - begin, 1)


def test_choose_frequency_gives_about_ten_updates():
    assert schedules.choose_frequency(1, 201) == 20
    assert len(schedules.mask_update_steps(1, 1001, schedules.choose_frequency(1, 1001))) in range(8, 14)


def test_mask_update_steps_rejects_zero_frequency():
    with pytest.raises(ValueError, match="frequency must be >= 1"):
        schedules.mask_update_steps(1, 10, 0)


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.8, 0.95])
def test_magnitude_mask_keeps_largest(sparsity):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 32)).astype("float32")
    mask = schedules.magnitude_mask(w, sparsity)
    assert schedules.sparsity_of(mask) == pytest.approx(sparsity, abs=1 / w.size)
    kept, dropped = np.abs(w[mask == 1]), np.abs(w[mask == 0])
    assert dropped.size == 0 or kept.min() >= dropped.max()


def test_magnitude_mask_keeps_at_least_one():
    assert schedules.magnitude_mask(np.array([0.1, 0.2, 0.3]), 0.99).sum() == 1


def test_magnitude_mask_rejects_bad_sparsity():
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\). Received: sparsity=1.0"):
        schedules.magnitude_mask(np.ones(4), 1.0)


@pytest.mark.parametrize("shape", [(3, 3, 8, 4), (3, 3, 6, 4), (16, 5), (1, 1, 1, 2)], ids=str)
def test_m_by_n_mask_pattern(shape):
    w = np.random.default_rng(1).standard_normal(shape).astype("float32")
    mask = schedules.m_by_n_mask(w, 2, 4)
    assert mask.shape == w.shape
    assert schedules.m_by_n_holds(w * mask, 2, 4)
    if shape[-2] % 4 == 0:
        assert schedules.sparsity_of(mask) == pytest.approx(0.5)


def test_m_by_n_mask_keeps_the_two_largest_of_each_block():
    w = np.array([0.1, -4.0, 2.0, 0.5, 3.0, 0.0, -0.2, 1.0]).reshape(8, 1)
    assert schedules.m_by_n_mask(w, 2, 4).ravel().tolist() == [0, 1, 1, 0, 1, 0, 0, 1]


def test_m_by_n_holds_detects_violation():
    w = np.array([[1.0, 1.0, 1.0, 0.0]])
    assert not schedules.m_by_n_holds(w, 2, 4, axis=-1)
    assert schedules.m_by_n_holds(np.array([[1.0, 0.0, 0.0, 2.0]]), 2, 4, axis=-1)


@pytest.mark.parametrize("m, n", [(4, 4), (0, 4), (3, 2), (2.0, 4)], ids=str)
def test_m_by_n_rejects_bad_pattern(m, n):
    with pytest.raises(ValueError, match="m:n sparsity needs integers 0 < m < n"):
        schedules.m_by_n_mask(np.ones((4, 4)), m, n)


def test_sparsity_of():
    assert schedules.sparsity_of(np.array([0.0, 0.0, 1.0, 2.0])) == 0.5
    assert schedules.sparsity_of(np.array([])) == 0.0


# ------------------------------------------------------------------ resolved schedules (what prune uses)
@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(), ("polynomial", 1, 201, 20)),
        (dict(begin_step=5, end_step=25), ("polynomial", 5, 25, 2)),
        (dict(end_step=1), ("constant", 1, 1, 1)),
        (dict(schedule="constant"), ("constant", 1, -1, 100)),
        (dict(schedule="constant", end_step=50, frequency=10), ("constant", 1, 50, 10)),
        (dict(m_by_n=(2, 4), end_step=99), ("constant", 1, 1, 1)),
    ],
    ids=["default", "ramp", "one-step", "constant", "constant-end", "m_by_n"],
)
def test_make_schedule_resolves_options(kwargs, expected):
    spec = schedules.make_schedule(0.8, **kwargs)
    assert (spec.kind, spec.begin_step, spec.end_step, spec.frequency) == expected


@pytest.mark.parametrize("end_step", [3, 30, 201, 997], ids=str)
def test_make_schedule_last_update_reaches_the_target(end_step):
    spec = schedules.make_schedule(0.9, end_step=end_step)
    updates = [step for step in range(0, end_step + 50) if spec.updates_at(step)]
    assert updates[-1] == spec.last_step == end_step
    assert spec.sparsity(updates[-1]) == pytest.approx(0.9)
    assert [spec.sparsity(s) for s in updates] == sorted(spec.sparsity(s) for s in updates)


def test_make_schedule_frequency_not_dividing_the_ramp_moves_end_step():
    with pytest.warns(UserWarning, match="Using end_step=31"):
        spec = schedules.make_schedule(0.5, end_step=25, frequency=10)
    assert spec.end_step == 31 and spec.updates_at(31)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(frequency=300), "frequency=300 is longer than the pruning ramp"),
        (dict(schedule="cubic"), "schedule must be one of"),
        (dict(begin_step=-2), "begin_step must be a non-negative integer"),
        (dict(begin_step=9, end_step=4), "end_step must be >= begin_step"),
        (dict(frequency=0), "frequency must be >= 1"),
    ],
    ids=["long-frequency", "schedule", "begin", "order", "zero-frequency"],
)
def test_make_schedule_rejects_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        schedules.make_schedule(0.5, **kwargs)


def test_constant_schedule_first_update_already_at_target():
    spec = schedules.make_schedule(0.6, "constant", begin_step=4)
    assert not spec.updates_at(3) and spec.updates_at(4) and spec.sparsity(4) == 0.6
    assert spec.updates_at(104) and not spec.updates_at(5)
