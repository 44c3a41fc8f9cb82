"""Selective precision: ranking maths, exclude by name, automatic choice of the ops kept float."""

import keras
import numpy as np
import pytest

from tfopt.export.selective import quantize_selective, rank_by_error_added


def test_selective_rank_blames_the_op_that_adds_the_error():
    ranked = rank_by_error_added(["a", "b", "c", "d"], [50.0, 48.0, 20.0, float("inf")])
    assert ranked[0] == ("c", 28.0)
    assert dict(ranked)["a"] == 0.0  # as good as an ideal 8-bit quantizer
    assert dict(ranked)["d"] == -80.0  # an exact op does not add error


def _sensitive_model():
    """Channel 0 of "wide" spans a huge range but is ignored by "head": int8 crushes the other channels."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8,), name="features"),
            keras.layers.Dense(16, activation="relu", name="first"),
            keras.layers.Dense(16, name="wide"),
            keras.layers.Dense(3, name="head"),
        ]
    )
    kernel, bias = model.get_layer("wide").get_weights()
    kernel[:, 0] *= 3000.0
    model.get_layer("wide").set_weights([kernel, bias])
    kernel, bias = model.get_layer("head").get_weights()
    kernel[0] = 0.0
    model.get_layer("head").set_weights([kernel, bias])
    x = np.random.default_rng(0).random((300, 8)).astype("float32")
    y = np.argmax(model.predict(x, verbose=0), -1)
    return model, x, y


def test_selective_keeps_fewest_ops_float_to_meet_tolerance():
    model, x, y = _sensitive_model()
    result = quantize_selective(model, calibration=x, validation=(x, y), max_accuracy_drop=0.02)
    assert result.fully_quantized_accuracy < 0.9  # plain int8 loses the small features
    assert result.float_accuracy - result.quantized_accuracy <= 0.02
    # The head loses the most SNR, but the crushed tensor is wide's output: both end up float.
    assert len(result.kept_float) == 2 and "wide" in result.kept_float[1]
    assert result.result.inspection.precision_counts == {"float32": 2, "int8": 1}
    assert "2 op(s) kept float" in result.summary()
    assert result.to_dict()["steps"][0]["accuracy"] == result.fully_quantized_accuracy


def test_selective_exclude_by_name_and_errors():
    model, x, y = _sensitive_model()
    result = quantize_selective(model, calibration=x, exclude=["head"])
    assert result.result.inspection.precision_counts == {"int8": 2, "float32": 1}
    assert result.float_accuracy is None
    with pytest.raises(ValueError, match="max_accuracy_drop is a fraction"):
        quantize_selective(model, calibration=x, max_accuracy_drop=5)
