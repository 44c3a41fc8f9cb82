"""The LiteRT Quantizer engine of convert(): static int8, 16x8, int4, exclusions, errors; the deprecated quantize_tflite."""

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
    result = convert(convert(model), mode="static_wi8_ai8", engine="litert_quantizer",
                     calibration=calibration_data(X, model=model), check_delegation=False)
    assert (result.mode, result.recipe) == ("int8", "static_wi8_ai8")
    assert result.inspection.precision_counts == {"int8": 3}
    assert result.inspection.inputs[0].dtype == "INT8"
    assert compare(model, result, X).outputs[0].cosine > 0.99


@pytest.mark.parametrize(
    "recipe, precision",
    [("16x8", "int16x8"), ("int4", "hybrid-int4"), ("weight_only_wi8_afp32", "dequantized-int8")],
    ids=["16x8", "int4", "weight_only"],
)
def test_quantizer_recipes_by_name_and_alias(model, recipe, precision):
    result = convert(model, mode=recipe, engine="litert_quantizer", calibration=X, check_delegation=False)
    assert set(result.inspection.precision_counts) == {precision}


def test_quantizer_exclude_keeps_layer_float(model):
    assert "hidden" in layer_regex("hidden")
    result = convert(model, mode="int8", engine="litert_quantizer", calibration=X, float_fallback=["hidden"])
    assert result.inspection.precision_counts == {"int8": 2, "float32": 1}
    assert [op.name for op in result.inspection.float_compute_ops] == ["FULLY_CONNECTED"]


def test_quantizer_errors(model):
    with pytest.raises(ValueError, match="Unknown mode 'int3' for engine='litert_quantizer'"):
        convert(model, mode="int3", engine="litert_quantizer")
    with pytest.raises(ValueError, match="needs calibration data"):
        convert(model, mode="int8", engine="litert_quantizer")
    with pytest.raises(ValueError, match="rule 'nope' matched no op"):
        convert(model, mode="int4", engine="litert_quantizer", float_fallback="nope")
    int8 = convert(model, mode="int8", calibration=X, check_delegation=False)
    with pytest.raises(ValueError, match="expects a float32 .tflite"):
        convert(int8, mode="int4", engine="litert_quantizer")
    with pytest.raises(ValueError, match="only be quantized further with engine='litert_quantizer'"):
        convert(int8, mode="int8", calibration=X)


def test_quantize_tflite_is_a_deprecated_wrapper_of_convert(model):
    with pytest.warns(DeprecationWarning, match="engine='litert_quantizer'"):
        old = quantize_tflite(model, recipe="int8", calibration=X, exclude=["hidden"])
    new = convert(model, mode="int8", engine="litert_quantizer", calibration=X, float_fallback=["hidden"],
                  check_delegation=False)
    assert old.tflite == new.tflite and old.float_fallback == new.float_fallback


def test_quantizer_cli_ptq_writes_tflite_and_json(model, tmp_path):
    import json

    from tfopt import cli

    model_path, data_path = str(tmp_path / "m.keras"), str(tmp_path / "d.npz")
    out, report = str(tmp_path / "q.tflite"), str(tmp_path / "q.json")
    model.save(model_path)
    y = np.argmax(model.predict(X, verbose=0), -1)
    np.savez(data_path, x_train=X, y_train=y, x_test=X, y_test=y)
    assert cli.main(["quantize", model_path, f"--output={out}", f"--data={data_path}", f"--json={report}",
                     "--method=ptq", "--mode=int8", "--exclude=logits"]) == 0
    payload = json.load(open(report))
    assert payload["float_accuracy"] == 1.0 and payload["tflite_accuracy"] >= 0.9
    assert payload["precision"] == {"int8": 2, "float32": 1}
    assert payload["kept_float"][0]["name"] == "logits"
