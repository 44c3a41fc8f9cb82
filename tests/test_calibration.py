"""tfopt.calibration_data: every input form users hold, spread sampling, streaming, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest

import tfopt


def test_calibration_arrays_spread_over_whole_data(tiny_cnn):
    x = np.zeros((1000, 8, 8, 1), np.float32)
    x[:, 0, 0, 0] = np.arange(1000)  # each example carries its index
    calib = tfopt.calibration_data(x, model=tiny_cnn, num_samples=50, seed=1)
    picked = np.array([example[0][0, 0, 0, 0] for example in calib])
    assert len(calib) == 50 and calib.num_seen == 1000
    assert len(set(picked)) == 50
    assert picked.max() > 500, "samples must come from the whole data, not the first batch"
    assert all(example[0].shape == (1, 8, 8, 1) for example in calib)


def test_calibration_is_seeded(tiny_cnn, rng):
    x = rng.random((300, 8, 8, 1), dtype=np.float32)
    a = tfopt.calibration_data(x, model=tiny_cnn, num_samples=20, seed=3).as_arrays()[0]
    b = tfopt.calibration_data(x, model=tiny_cnn, num_samples=20, seed=3).as_arrays()[0]
    np.testing.assert_array_equal(a, b)


def test_calibration_casts_to_model_dtype(tiny_cnn):
    x = np.random.default_rng(0).integers(0, 255, (30, 8, 8, 1)).astype(np.uint8)
    calib = tfopt.calibration_data(x, model=tiny_cnn, num_samples=10)
    assert next(iter(calib))[0].dtype == np.float32


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("with_labels", [True, False], ids=["x_y", "x_only"])
def test_calibration_tf_data(tiny_cnn, rng, batched, with_labels):
    import tensorflow as tf

    x = rng.random((120, 8, 8, 1), dtype=np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, np.zeros(120)) if with_labels else x)
    if batched:
        ds = ds.batch(32)
    calib = tfopt.calibration_data(ds, model=tiny_cnn, num_samples=40)
    assert len(calib) == 40 and calib.num_seen == 120
    stacked = calib.as_arrays()[0]
    assert stacked.shape == (40, 8, 8, 1)
    # every sample is one of the real examples
    assert all(np.any(np.all(x == s, axis=(1, 2, 3))) for s in stacked[:5])


def test_calibration_generator_streams(tiny_cnn):
    produced = {"n": 0}

    def stream():
        for i in range(5000):  # 5,000 examples pass through; only 25 are kept
            produced["n"] += 1
            yield np.full((8, 8, 1), i, np.float32), i

    calib = tfopt.calibration_data(stream(), model=tiny_cnn, num_samples=25)
    assert produced["n"] == 5000 and len(calib) == 25
    assert max(ex[0].max() for ex in calib) > 2500


def test_calibration_pydataset(tiny_cnn, rng):
    import keras

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            return rng.random((16, 8, 8, 1), dtype=np.float32), np.zeros(16)

    calib = tfopt.calibration_data(Batches(), model=tiny_cnn, num_samples=30)
    assert len(calib) == 30 and calib.num_seen == 64


@pytest.mark.parametrize("form", ["list", "dict", "dict_in_tuple"])
def test_calibration_multi_input(two_input_model, rng, form):
    image, meta = rng.random((50, 8, 8, 1), dtype=np.float32), rng.random((50, 3), dtype=np.float32)
    data = {
        "list": [image, meta],
        "dict": {"meta": meta, "image": image},
        "dict_in_tuple": ({"image": image, "meta": meta}, np.zeros(50)),
    }[form]
    calib = tfopt.calibration_data(data, model=two_input_model, num_samples=10)
    first = next(iter(calib))
    assert [a.shape for a in first] == [(1, 8, 8, 1), (1, 3)]
    assert set(calib.as_signature_inputs()[0]) == {"image", "meta"}


def test_calibration_empty_data_error(tiny_cnn):
    with pytest.raises(ValueError, match="empty"):
        tfopt.calibration_data(np.zeros((0, 8, 8, 1), np.float32), model=tiny_cnn)
    with pytest.raises(ValueError, match="empty"):
        tfopt.calibration_data(iter([]), model=tiny_cnn)


def test_calibration_wrong_shape_error(tiny_cnn):
    with pytest.raises(ValueError, match=r"shape \(28, 28\).*expects"):
        tfopt.calibration_data(np.zeros((10, 28, 28), np.float32), model=tiny_cnn)


def test_calibration_nan_error(tiny_cnn):
    x = np.zeros((10, 8, 8, 1), np.float32)
    x[3, 1, 1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        tfopt.calibration_data(x, model=tiny_cnn)


def test_calibration_type_errors(tiny_cnn):
    with pytest.raises(TypeError, match="numeric"):
        tfopt.calibration_data(np.array([["a"] * 4] * 3), model=tiny_cnn)
    with pytest.raises(TypeError, match="np.load"):
        tfopt.calibration_data("data.npz", model=tiny_cnn)
    with pytest.raises(ValueError, match="num_samples"):
        tfopt.calibration_data(np.zeros((3, 8, 8, 1)), model=tiny_cnn, num_samples=0)


def test_calibration_dict_missing_input_error(two_input_model):
    with pytest.raises(ValueError, match="missing"):
        tfopt.calibration_data({"image": np.zeros((5, 8, 8, 1), np.float32)}, model=two_input_model)
