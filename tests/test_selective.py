"""Float fallback (selective precision): ranking maths, by name, automatic choice for both engines; the deprecated
quantize_selective."""

import keras
import numpy as np
import pytest

from tfopt.export.convert import convert
from tfopt.export.selective import quantize_selective, rank_by_error_added


def test_selective_rank_blames_the_op_that_adds_the_error():
    ranked = rank_by_error_added(["a", "b", "c", "d"], [50.0, 48.0, 20.0, float("inf")])
    assert ranked[0] == ("c", 28.0)
    assert dict(ranked)["a"] == 0.0  # as good as an ideal 8-bit quantizer
    assert dict(ranked)["d"] == -80.0  # an exact op does not add error


def _sensitive_model(tail=False):
    """Channel 0 of "wide" spans a huge range but is ignored by "head": int8 crushes the other channels.

    With `tail`, an identity Dense follows "head", so "head" is not the model's output op (the converter
    cannot keep an output op float).
    """
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8,), name="features"),
            keras.layers.Dense(16, activation="relu", name="first"),
            keras.layers.Dense(16, name="wide"),
            keras.layers.Dense(3, name="head"),
        ]
        + ([keras.layers.Dense(3, name="tail", kernel_initializer="identity")] if tail else [])
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
    with pytest.warns(DeprecationWarning):
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
    with pytest.warns(DeprecationWarning):
        result = quantize_selective(model, calibration=x, exclude=["head"])
    assert result.result.inspection.precision_counts == {"int8": 2, "float32": 1}
    assert result.float_accuracy is None
    with pytest.raises(ValueError, match="max_accuracy_drop is a fraction"), pytest.warns(DeprecationWarning):
        quantize_selective(model, calibration=x, max_accuracy_drop=5)


@pytest.mark.parametrize("engine", ["converter", "litert_quantizer"])
def test_convert_float_fallback_auto_meets_tolerance(engine):
    model, x, y = _sensitive_model(tail=True)
    full = convert(model, mode="int8", engine=engine, calibration=x, check_delegation=False)
    result = convert(model, mode="int8", engine=engine, calibration=x, float_fallback="auto", validation=(x, y),
                     max_accuracy_drop=2.0, check_delegation=False)
    search = result.fallback_search
    assert search["criterion"] == "accuracy" and search["met"]
    assert search["fully_quantized"] < 0.9 and search["reference"] - search["final"] <= 0.02
    assert 1 <= len(result.float_fallback) <= 3 and result.size_bytes > full.size_bytes
    assert sum(result.inspection.precision_counts.values()) == 4 and result.inspection.precision_counts.get("float32")
    assert "float fallback search (accuracy)" in result.summary() and result.to_dict()["fallback_search"] == search


def test_convert_float_fallback_auto_without_labels_uses_agreement():
    model, x, _ = _sensitive_model()
    result = convert(model, mode="int8", engine="litert_quantizer", calibration=x, float_fallback="auto",
                     max_accuracy_drop=5.0, check_delegation=False)
    search = result.fallback_search
    assert search["criterion"] == "top1_agreement" and search["reference"] == 1.0
    assert search["met"] and search["final"] >= 0.95 > search["fully_quantized"]
