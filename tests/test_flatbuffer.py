"""tfopt.inspect_tflite: ops, precision, weights; malformed input gives clear errors."""

from __future__ import annotations

import numpy as np
import pytest

import tfopt


def test_inspect_reports_ops_inputs_weights(tiny_cnn, rng):
    result = tfopt.convert(tiny_cnn, mode="int8", calibration=rng.random((20, 8, 8, 1), dtype=np.float32))
    info = tfopt.inspect_tflite(result.tflite)
    assert info.op_counts["CONV_2D"] == 1 and info.op_counts["FULLY_CONNECTED"] == 1
    assert info.float_compute_ops == []
    assert info.inputs[0].shape == (1, 8, 8, 1)
    kernels = [w for w in info.weights if w.dtype == "INT8" and len(w.shape) >= 2]
    assert sum(w.num_elements for w in kernels) == 8 * 9 + 8 * 8 * 8 * 4
    assert "compute ops by precision" in info.summary()
    assert info.to_dict()["precision_counts"] == {"int8": 2}


def test_inspect_counts_zeros_in_weights():
    import keras

    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8, use_bias=False)])
    kernel = np.ones((16, 8), np.float32)
    kernel[:8] = 0.0
    model.set_weights([kernel])
    info = tfopt.inspect_tflite(tfopt.convert(model))
    (weight,) = [w for w in info.weights if w.num_elements == 128]
    assert weight.zero_fraction == pytest.approx(0.5) and weight.num_unique == 2


def test_inspect_accepts_path(tiny_cnn, tmp_path):
    path = tmp_path / "m.tflite"
    tfopt.convert(tiny_cnn, output=path)
    assert tfopt.inspect_tflite(str(path)).size_bytes == path.stat().st_size


@pytest.mark.parametrize(
    "content, error, match",
    [
        (b"hello world, not a model", ValueError, "not a TFLite flatbuffer"),
        (b"", ValueError, "not a TFLite flatbuffer"),
        (12, TypeError, "Expected a .tflite model"),
    ],
    ids=["text", "empty", "int"],
)
def test_inspect_rejects_non_tflite(content, error, match):
    with pytest.raises(error, match=match):
        tfopt.inspect_tflite(content)


def test_inspect_truncated_flatbuffer(tiny_cnn):
    content = tfopt.convert(tiny_cnn).tflite
    with pytest.raises(ValueError, match="malformed"):
        tfopt.inspect_tflite(content[: len(content) // 3])


def test_inspect_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        tfopt.inspect_tflite(str(tmp_path / "none.tflite"))
