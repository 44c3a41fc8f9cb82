"""LiteRT Quantizer recipes: static int8, 16x8, int4, exclusions, errors."""

import numpy as np
import pytest

from tfopt.export.calibration import calibration_data
from tfopt.export.convert import convert
from tfopt.measure.parity import compare
from tfopt.export.quantizer import layer_regex, quantize_tflite

from conftest import small_classifier  # noqa: E402

RNG = np.random.default_rng(0)
X = RNG.random((40, 8, 8, 1), dtype="float32")


@pytest.fixture(scope="module")
def model():
    return small_classifier()


def test_quantizer_static_int8_is_full_integer(model):
    result = quantize_tflite(convert(model), recipe="static_wi8_ai8", calibration=calibration_data(X, model=model))
    assert result.mode == "litert:static_wi8_ai8"
    assert result.inspection.precision_counts == {"int8": 3}
    assert result.inspection.inputs[0].dtype == "INT8"
    assert compare(model, result, X).outputs[0].cosine > 0.99


@pytest.mark.parametrize(
    "recipe, precision",
    [("16x8", "int16x8"), ("int4", "hybrid"), ("weight_only_wi8_afp32", "dequantized-int8")],
    ids=["16x8", "int4", "weight_only"],
)
def test_quantizer_recipes_by_name_and_alias(model, recipe, precision):
    result = quantize_tflite(model, recipe=recipe, calibration=X)  # a Keras model is converted to float first
    assert set(result.inspection.precision_counts) == {precision}


def test_quantizer_exclude_keeps_layer_float(model):
    assert "hidden" in layer_regex("hidden")
    result = quantize_tflite(model, calibration=X, exclude=["hidden"])
    assert result.inspection.precision_counts == {"int8": 2, "float32": 1}
    assert [op.name for op in result.inspection.float_compute_ops] == ["FULLY_CONNECTED"]


def test_quantizer_errors(model):
    with pytest.raises(ValueError, match="Unknown recipe 'int3'"):
        quantize_tflite(model, recipe="int3")
    with pytest.raises(ValueError, match="needs calibration data"):
        quantize_tflite(model, recipe="static_wi8_ai8")
    with pytest.raises(ValueError, match="exclude rule 'nope' matched no op"):
        quantize_tflite(model, recipe="int4", exclude="nope")
    int8 = convert(model, mode="int8", calibration=X)
    with pytest.raises(ValueError, match="expects a float32 .tflite"):
        quantize_tflite(int8, recipe="int4")


def test_quantizer_cli_ptq_writes_tflite_and_json(model, tmp_path):
    import json

    from absl import flags

    from tfopt._cli import common, quantize as cli

    model_path, data_path = str(tmp_path / "m.keras"), str(tmp_path / "d.npz")
    out, report = str(tmp_path / "q.tflite"), str(tmp_path / "q.json")
    model.save(model_path)
    y = np.argmax(model.predict(X, verbose=0), -1)
    np.savez(data_path, x_train=X, y_train=y, x_test=X, y_test=y)
    flags.FLAGS(["tfopt", f"--output={out}", f"--data={data_path}", f"--json={report}", "--method=ptq", "--mode=int8", "--exclude=logits"])
    try:
        assert cli.main([model_path]) == 0
        payload = json.load(open(report))
        assert payload["float_accuracy"] == 1.0 and payload["tflite_accuracy"] >= 0.9
        assert payload["precision"] == {"int8": 2, "float32": 1}
        assert payload["kept_float"][0]["name"] == "logits"
        flags.FLAGS(["tfopt", f"--output={out}", f"--data={data_path}", "--method=qat", "--mode=int4", "--exclude="])
        with pytest.raises(common.CLIError, match="--method qat produces int8"):
            cli.main([model_path])
    finally:
        flags.FLAGS.unparse_flags()
