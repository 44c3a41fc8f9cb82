"""Parity check: metrics as plain numpy, Keras vs .tflite, .tflite vs .tflite, errors."""

import json
import math

import numpy as np
import pytest

from tfopt.export.calibration import calibration_data
from tfopt.export.convert import convert
from tfopt.measure.parity import compare, cosine_similarity, snr_db, top1_agreement

from conftest import small_classifier  # noqa: E402

RNG = np.random.default_rng(0)
X = RNG.random((40, 8, 8, 1), dtype="float32")


def _cnn():
    return small_classifier()


def test_parity_metrics_plain_numpy():
    a = np.array([[1.0, 2.0, 3.0], [3.0, 0.0, 1.0]])
    assert snr_db(a, a) == math.inf
    assert snr_db(a, a * 1.1) == pytest.approx(20.0)
    assert cosine_similarity(a, 2 * a) == pytest.approx(1.0)
    assert cosine_similarity(a, -a) == pytest.approx(-1.0)
    assert top1_agreement(a, np.array([[0, 0, 1.0], [0, 1.0, 0]])) == 0.5


def test_parity_keras_vs_float_tflite_agrees_exactly():
    model = _cnn()
    result = compare(model, convert(model), (X, RNG.integers(0, 4, 40)))
    assert result.top1_agreement == 1.0
    assert result.outputs[0].snr_db > 60
    assert result.reference_accuracy == result.candidate_accuracy
    assert {l.name for l in result.layers} >= {"conv", "hidden"}
    assert result.first_divergence is None
    json.dumps(result.to_dict())  # infinite SNRs become null
    assert "top-1 agreement: 100.00%" in result.summary()


def test_parity_names_first_diverging_layer_of_int8_tflite():
    model = _cnn()
    int8 = convert(model, mode="int8", calibration=calibration_data(X, model=model, num_samples=40))
    result = compare(model, int8, X, divergence_snr_db=200.0)  # every quantized layer is below 200 dB
    assert result.layers and result.first_divergence == result.layers[0].name
    assert result.outputs[0].snr_db < 200
    strict = compare(model, int8, X, divergence_snr_db=-10.0)
    assert strict.first_divergence is None


def test_parity_tflite_vs_tflite_matches_tensors_by_name():
    model = _cnn()
    a = convert(model)
    b = convert(model, mode="float16")
    result = compare(a, b, X[:10])
    assert result.top1_agreement == 1.0
    assert len(result.layers) >= 3


def test_parity_errors_name_what_was_received():
    model = _cnn()
    with pytest.raises(TypeError, match="reference must be a Keras model"):
        compare(object(), model, X)
    with pytest.raises(ValueError, match="same non-zero number"):
        compare(model, model, [X, X[:3]])
    with pytest.raises(ValueError, match="max_examples must be"):
        compare(model, model, X, max_examples=0)


def test_parity_runs_litert_only_in_the_worker(monkeypatch):
    """An Interpreter built in this process would fail: every .tflite run happens in the measurement worker."""
    import ai_edge_litert.interpreter as litert

    model = _cnn()
    tflite = convert(model)

    def refuse(*args, **kwargs):
        raise AssertionError("LiteRT ran in the caller's process")

    monkeypatch.setattr(litert, "Interpreter", refuse)
    result = compare(model, tflite, (X[:8], RNG.integers(0, 4, 8)))
    assert result.top1_agreement == 1.0 and result.layers
    assert result.reference_accuracy == result.candidate_accuracy
