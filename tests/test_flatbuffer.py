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


# --- read_model: the one parser checks every cross reference --------------------------------------


def _edited(content: bytes, edit) -> bytes:
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    edit(model)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _set(obj, **values):
    for key, value in values.items():
        setattr(obj, key, value)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda m: _set(m.subgraphs[0].operators[0], opcodeIndex=99), "uses operator code 99"),
        (lambda m: _set(m.subgraphs[0].operators[0], inputs=[0, 999]), "outside its"),
        (lambda m: _set(m.subgraphs[0], outputs=[555]), "point outside"),
        (lambda m: _set(m.subgraphs[0].tensors[0], type=120), "unknown type 120"),
        (lambda m: _set(m.subgraphs[0].tensors[0], buffer=4000), "truncated (IndexError)"),  # caught while parsing
        (lambda m: _set(m.subgraphs[0].tensors[0], shape=[1, -7]), "negative dimension"),
        (lambda m: _set(m, subgraphs=[]), "no subgraph"),
    ],
    ids=["opcode", "op-input", "subgraph-output", "tensor-type", "buffer", "shape", "no-subgraph"],
)
def test_read_model_refuses_dangling_references(tiny_cnn, edit, match):
    from tfopt.analyze import flatbuffer

    content = _edited(tfopt.convert(tiny_cnn).tflite, edit)
    with pytest.raises(ValueError, match="not a valid .tflite") as caught:
        flatbuffer.read_model(content)
    assert match in str(caught.value) and "\n" not in str(caught.value)
    for reader in (tfopt.inspect_tflite, tfopt.profile):
        with pytest.raises(ValueError, match="not a valid .tflite"):
            reader(content)


def test_op_name_one_table(tiny_cnn):
    from tfopt.analyze import flatbuffer

    model = flatbuffer.read_model(tfopt.convert(tiny_cnn).tflite)
    names = {flatbuffer.op_name(model, op.opcodeIndex) for op in model.subgraphs[0].operators}
    assert {"CONV_2D", "FULLY_CONNECTED"} <= names
    assert flatbuffer.type_name(9) == "INT8" and flatbuffer.type_name(250) == "TYPE_250"


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.9, 0.99])
def test_readers_truncated_tflite_clear_error(tiny_cnn, cut):
    content = tfopt.convert(tiny_cnn).tflite
    truncated = content[: int(len(content) * cut)]
    from tfopt.analyze.sparsity import tflite_sparsity

    for reader in (tfopt.inspect_tflite, tfopt.profile, tflite_sparsity):
        with pytest.raises(ValueError, match="not a valid .tflite"):
            reader(truncated)
