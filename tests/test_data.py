"""tfopt._data: each kind of bad data gives one line saying what was received, what was expected, how to fix it."""

from __future__ import annotations

import numpy as np
import pytest

from tfopt._data import check_arrays, check_int
from tfopt.errors import InvalidArgumentError, InvalidTypeError

X = np.random.default_rng(0).normal(size=(6, 4, 4, 1)).astype(np.float32)
Y = np.array([0, 1, 2, 0, 1, 2])


def _message(exc_type=InvalidArgumentError, *args, **kwargs) -> str:
    with pytest.raises(exc_type) as caught:
        check_arrays(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and "Expected" in message
    return message


def test_check_arrays_valid_data_passes_through():
    x, y = check_arrays(X, Y, num_classes=3, input_shape=(None, 4, 4, 1))
    assert x is X or np.array_equal(x, X)
    np.testing.assert_array_equal(y, Y)
    x, y = check_arrays(X.tolist(), [0.0, 1.0, 2.0, 0.0, 1.0, 2.0], num_classes=3)  # whole floats are fine
    assert x.shape == X.shape and y.dtype.kind == "f"
    assert check_arrays(X)[1] is None


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_check_arrays_non_finite_x(value):
    x = X.copy()
    x[3, 1, 2, 0] = value
    message = _message(InvalidArgumentError, x, Y)
    assert "1 NaN or infinite" in message and "(3, 1, 2, 0)" in message


def test_check_arrays_non_finite_y_regression():
    message = _message(InvalidArgumentError, X, np.array([0.5, np.nan, 1, 2, 3, 4]), task="regression")
    assert "data y holds 1 NaN" in message


def test_check_arrays_empty():
    assert "is empty" in _message(InvalidArgumentError, X[:0], Y[:0])
    assert "is empty" in _message(InvalidArgumentError, np.zeros((5, 0)), None)
    assert "single number" in _message(InvalidArgumentError, np.float32(3.0))


def test_check_arrays_length_mismatch():
    message = _message(InvalidArgumentError, X, Y[:4], name="--data x_train")
    assert message.startswith("--data x_train: x holds 6 example(s) but y holds 4 label(s)")


def test_check_arrays_non_numeric():
    assert "strings" in _message(InvalidArgumentError, np.array([["a", "b"]] * 6), Y)
    message = _message(InvalidArgumentError, X, np.array(["cat", "dog", "cat", "dog", "cat", "dog"]))
    assert "'cat'" in message and "np.unique" in message
    with pytest.raises(InvalidTypeError, match="cannot be read as an array"):
        check_arrays([[1.0, 2.0], [3.0]], None)


def test_check_arrays_float_labels_not_integral():
    message = _message(InvalidArgumentError, X, Y + 0.5)
    assert "non-integer labels" in message and "task='regression'" in message
    assert check_arrays(X, Y + 0.5, task="regression")[1] is not None


def test_check_arrays_negative_labels():
    y = Y.copy()
    y[4] = -1
    assert "negative label(s) (e.g. -1 at index 4)" in _message(InvalidArgumentError, X, y)


def test_check_arrays_labels_out_of_range():
    y = Y.copy()
    y[5] = 10
    message = _message(InvalidArgumentError, X, y, num_classes=3)
    assert "1 label(s) >= num_classes=3 (largest 10, at index 5)" in message and "0..2" in message
    check_arrays(X, y)  # without num_classes nothing bounds the labels


def test_check_arrays_one_hot_labels():
    one_hot = np.eye(3, dtype=np.float32)[Y]
    assert check_arrays(X, one_hot, num_classes=3)[1].shape == (6, 3)
    assert "width 3 but the model predicts 5" in _message(InvalidArgumentError, X, one_hot, num_classes=5)
    assert "in [0, 1]" in _message(InvalidArgumentError, X, one_hot * 2)


def test_check_arrays_input_shape():
    message = _message(InvalidArgumentError, X, Y, input_shape=(8, 8, 1))
    assert "shape (6, 4, 4, 1). Expected (N, 8, 8, 1)" in message
    assert "Expected (N, 4, 4, 1)" in _message(InvalidArgumentError, X[..., 0], Y, input_shape=(None, 4, 4, 1))
    check_arrays(X, Y, input_shape=(4, None, 1))  # None matches any size


def test_check_arrays_multi_input():
    meta = np.zeros((6, 3), np.float32)
    x, _ = check_arrays([X, meta], Y, input_shape=[(None, 4, 4, 1), (None, 3)])
    assert len(x) == 2
    assert "different numbers of examples [6, 5]" in _message(InvalidArgumentError, [X, meta[:5]], Y)
    bad = meta.copy()
    bad[0, 0] = np.nan
    assert "x['meta']" in _message(InvalidArgumentError, {"image": X, "meta": bad}, Y)
    assert "1 array(s) were given. Expected 2" in _message(InvalidArgumentError, X, Y, input_shape=[(None, 4, 4, 1), (None, 3)])


def test_check_arrays_unknown_task():
    with pytest.raises(InvalidArgumentError, match="task must be one of"):
        check_arrays(X, Y, task="detection")


@pytest.mark.parametrize("value,error", [(0, InvalidArgumentError), (-3, InvalidArgumentError),
                                         (2.0, InvalidTypeError), (True, InvalidTypeError)],
                         ids=["zero", "negative", "float", "bool"])
def test_check_int_refuses(value, error):
    with pytest.raises(error, match="epochs"):
        check_int("epochs", value)


def test_check_int_bounds():
    assert check_int("epochs", np.int64(5)) == 5
    assert check_int("seed", 0, minimum=0) == 0
    with pytest.raises(InvalidArgumentError, match=r"in \[1, 4\]"):
        check_int("bits", 8, maximum=4)


# --- tfopt.datasets.load_npz: the --data loader ------------------------------------------------


def _npz(tmp_path, name="d.npz", **arrays):
    path = str(tmp_path / name)
    np.savez(path, **arrays)
    return path


def test_load_npz_valid(tmp_path):
    from tfopt.datasets import load_npz

    path = _npz(tmp_path, x_train=X, y_train=Y, x_test=X[:2], y_test=Y[:2])
    data = load_npz(path, num_classes=3, input_shape=(None, 4, 4, 1))
    assert sorted(data) == ["x_test", "x_train", "y_test", "y_train"]
    np.testing.assert_array_equal(data["x_train"], X)


class _Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_load_npz_never_unpickles(tmp_path, capsys):
    from tfopt.datasets import load_npz

    objects = np.empty(1, dtype=object)
    objects[0] = _Payload()
    path = _npz(tmp_path, x_train=objects, y_train=Y, x_test=X, y_test=Y)
    with pytest.raises(InvalidArgumentError, match="Could not read .* without object arrays"):
        load_npz(path)
    assert "pickled code ran" not in capsys.readouterr().out


def test_load_npz_bad_files(tmp_path):
    from tfopt.datasets import load_npz
    from tfopt.errors import MissingFileError

    with pytest.raises(MissingFileError):
        load_npz(tmp_path / "absent.npz")
    text = tmp_path / "text.npz"
    text.write_text("not an archive")
    with pytest.raises(InvalidArgumentError, match="Could not read"):
        load_npz(text)
    single = str(tmp_path / "one.npy")
    np.save(single, X)
    with pytest.raises(InvalidArgumentError, match="single array"):
        load_npz(single)
    with pytest.raises(InvalidArgumentError, match=r"lacks \['x_test', 'y_test'\]"):
        load_npz(_npz(tmp_path, "partial.npz", x_train=X, y_train=Y))
    bad = X.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(InvalidArgumentError, match=r"\(train split\) x holds 1 NaN"):
        load_npz(_npz(tmp_path, "nan.npz", x_train=bad, y_train=Y, x_test=X, y_test=Y))
    with pytest.raises(InvalidArgumentError, match=r"\(test split\): x holds 6 example"):
        load_npz(_npz(tmp_path, "short.npz", x_train=X, y_train=Y, x_test=X, y_test=Y[:3]))


def test_dataset_hold_out_is_a_disjoint_seeded_validation_split(tmp_path):
    from tfopt.datasets import load_dataset
    from tfopt.search.inputs import validation_given

    data = load_dataset("digits")
    held = data.hold_out(0.2, seed=3)
    assert len(held.x_train) + len(held.x_val) == len(data.x_train)
    rows = {row.tobytes() for row in held.x_train}
    assert not any(row.tobytes() in rows for row in held.x_val if (data.x_train == row).all(axis=(1, 2, 3)).sum() == 1)
    np.testing.assert_array_equal(held.x_val, data.hold_out(0.2, seed=3).x_val)
    assert held.x_test is data.x_test
    path = held.to_npz(str(tmp_path / "held.npz"))
    assert validation_given(path) and not validation_given(data.to_npz(str(tmp_path / "plain.npz")))
    with pytest.raises(InvalidArgumentError, match="fraction"):
        data.hold_out(1.0)
    with pytest.raises(InvalidArgumentError, match="both x_val and y_val"):
        type(data)("d", data.x_train, data.y_train, data.x_test, data.y_test, x_val=data.x_test)
