"""Per-layer precision: the config and its rules (pure), and convert(..., layer_precision=...) on real digits."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import tfopt
from tfopt.export.precision import LayerPrecisionConfig, layer_precision_config
from tfopt.export.precision_handler import InfeasibleBoundError


# --- the config (no model) --------------------------------------------------------------------------------------


def test_precision_config_parse_text_and_round_trip():
    config = LayerPrecisionConfig.parse("dense_1=int4, re:conv.*=int8,head=fp16,default=int16x8")
    assert config.rules == (("dense_1", "int4"), ("re:conv.*", "int8"), ("head", "float16"))
    assert config.default == "int16x8"
    assert LayerPrecisionConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert LayerPrecisionConfig.parse(config.to_text()) == config


def test_precision_config_resolve_first_rule_wins_and_every_rule_must_match():
    config = LayerPrecisionConfig(rules={"re:fc.*": "int4", "fc2": "float32", "conv": "float16"})
    assert config.resolve(["conv", "fc1", "fc2", "logits"]) == {"fc1": "int4", "fc2": "int4", "conv": "float16"}
    with pytest.raises(ValueError, match="rule 'conv' matched no layer"):
        config.resolve(["fc1", "fc2"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rules": {"fc": "int3"}}, "unknown precision 'int3'"),
        ({"default": "int4"}, "default must be one of"),
        ({"rules": {"re:(": "int4"}}, "not a valid regular expression"),
        ({"auto": True}, "needs a bound"),
        ({"max_accuracy_drop": 1.0}, "pass auto=True"),
        ({"auto": True, "max_accuracy_drop": 150}, "max_accuracy_drop is in points"),
        ({"auto": True, "max_size_kb": 0}, "max_size_kb is in KB"),
        ({"rules": [("fc",)]}, r"\(rule, precision\) pair"),
    ],
    ids=["bad-precision", "bad-default", "bad-regex", "auto-no-bound", "bound-no-auto", "drop-range", "size-zero",
         "bad-pair"],
)
def test_precision_config_errors(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        LayerPrecisionConfig(**kwargs)


def test_precision_config_from_dict_rejects_unknown_keys_and_text_errors():
    with pytest.raises(ValueError, match="unknown keys"):
        LayerPrecisionConfig.from_dict({"rules": [], "bits": 4})
    with pytest.raises(ValueError, match="is not RULE=PRECISION"):
        LayerPrecisionConfig.parse("fc1:int4")
    with pytest.raises(ValueError, match="bound layer_precision='auto'"):
        layer_precision_config({"fc1": "int4"}, max_size_kb=10)
    assert layer_precision_config("auto", max_size_kb=10).auto


# --- on real digits ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_cnn(trained_cnn, mnist):
    model, _ = trained_cnn
    calibration = tfopt.calibration_data(mnist.x_train, model=model, num_samples=100, seed=0)
    validation = (mnist.x_test[:400], mnist.y_test[:400])
    uniform = tfopt.convert(model, mode="int8", engine="litert_quantizer", calibration=calibration,
                            check_delegation=False)
    return model, calibration, validation, uniform


def _accuracy(tflite, data):
    return tfopt.evaluate(tflite, data).value


def test_layer_precision_rules_write_each_precision(digits_cnn):
    model, calibration, _, uniform = digits_cnn
    result = tfopt.convert(model, layer_precision="fc1=int4,conv2=float16,logits=float32", calibration=calibration)
    layers = result.layer_precision["layers"]
    assert {name: info["written"] for name, info in layers.items()} == {
        "conv1": "int8", "conv2": "float16", "fc1": "int4", "logits": "float32"}
    assert all(info["xnnpack"] for info in layers.values())  # every one of these runs on XNNPACK
    assert result.inspection.weight_dtypes["INT4"] == 64 * 7 * 7 * 128 // 2
    assert result.size_bytes < 0.6 * uniform.size_bytes
    assert result.layer_precision["map"] == {"conv1": "int8", "conv2": "float16", "fc1": "int4", "logits": "float32"}


def test_layer_precision_reports_what_the_runtime_cannot_do(digits_cnn):
    model, calibration, _, _ = digits_cnn
    result = tfopt.convert(model, layer_precision={"conv2": "int4", "conv1": "int16x8"}, calibration=calibration)
    layers = result.layer_precision["layers"]
    assert layers["conv2"]["written"] == "int4" and layers["conv2"]["xnnpack"] is False
    assert layers["conv1"]["written"] == "int16x8" and layers["conv1"]["xnnpack"] is False
    assert any("'conv2' at int4" in w and "reference kernels" in w for w in result.warnings)


def test_layer_precision_float_fallback_is_the_float32_case(digits_cnn):
    model, calibration, _, _ = digits_cnn
    fallback = tfopt.convert(model, mode="int8", engine="litert_quantizer", calibration=calibration,
                             float_fallback=["fc1"], check_delegation=False)
    rules = tfopt.convert(model, layer_precision={"fc1": "float32"}, calibration=calibration, check_delegation=False)
    assert fallback.inspection.precision_counts == rules.inspection.precision_counts == {"int8": 3, "float32": 1}
    assert abs(fallback.size_bytes - rules.size_bytes) < 64


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"float_fallback": ["fc1"]}, "not both"),
        ({"engine": "converter"}, "written by LiteRT Quantizer"),
        ({"mode": "float16"}, "'int8' or 'int16x8'"),
        ({"layer_precision": {"nope": "int4"}}, "matched no layer"),
        ({"layer_precision": "auto", "max_accuracy_drop": 1.0}, "validation=\\(x_val, y_val\\)"),
        ({"layer_precision": "fc1=int4", "max_size_kb": 10}, "bound layer_precision='auto'"),
    ],
    ids=["with-fallback", "converter", "bad-mode", "no-match", "auto-no-validation", "bound-with-rules"],
)
def test_layer_precision_errors(digits_cnn, kwargs, match):
    model, calibration, _, _ = digits_cnn
    options = {"layer_precision": {"fc1": "int4"}, "calibration": calibration, "check_delegation": False, **kwargs}
    with pytest.raises(ValueError, match=match):
        tfopt.convert(model, **options)


@pytest.mark.parametrize("bound", ["drop", "size", "both"])
def test_layer_precision_auto_meets_each_bound(digits_cnn, bound):
    model, calibration, validation, uniform = digits_cnn
    float_accuracy = _accuracy(tfopt.convert(model, check_delegation=False), validation)
    size_kb = 0.7 * uniform.size_bytes / 1024
    bounds = {"drop": {"max_accuracy_drop": 1.0}, "size": {"max_size_kb": size_kb},
              "both": {"max_accuracy_drop": 1.0, "max_size_kb": size_kb}}[bound]
    result = tfopt.convert(model, layer_precision="auto", calibration=calibration, validation=validation, **bounds)
    search = result.layer_precision["search"]
    drop = 100 * (float_accuracy - _accuracy(result, validation))  # measured again, independently of the search
    if "max_accuracy_drop" in bounds:
        assert drop <= 1.0 + 1e-9
    if "max_size_kb" in bounds:
        assert result.size_bytes <= size_kb * 1024
    assert result.size_bytes < uniform.size_bytes
    assert search["final"]["size_bytes"] == result.size_bytes and abs(search["final"]["drop_points"] - drop) < 1e-6
    assert result.layer_precision["map"]["fc1"] == "int4"  # the big Dense layer: 4 bits at int8 speed
    assert all(info["written"] == info["requested"] for info in result.layer_precision["layers"].values())
    # the chosen map round-trips through to_dict / from_dict (and JSON) and rebuilds the same model
    chosen = LayerPrecisionConfig.from_dict(json.loads(json.dumps(result.to_dict()))["layer_precision"]["chosen"])
    again = tfopt.convert(model, layer_precision=chosen, calibration=calibration, check_delegation=False)
    assert again.tflite == result.tflite


def test_layer_precision_auto_refuses_an_impossible_bound(digits_cnn):
    model, calibration, validation, _ = digits_cnn
    with pytest.raises(InfeasibleBoundError, match="cannot meet max_accuracy_drop=0.0, max_size_kb=4") as info:
        tfopt.convert(model, layer_precision="auto", calibration=calibration, validation=validation,
                      max_accuracy_drop=0.0, max_size_kb=4)
    nearest = info.value.nearest
    assert nearest["size_bytes"] > 4 * 1024 and "nearest layer map measured gives" in str(info.value)
    assert nearest["layer_map"] and "KB at a drop of" in str(info.value)


def test_max_accuracy_drop_fraction_is_deprecated_and_shows_points(digits_cnn):
    model, calibration, validation, _ = digits_cnn
    with pytest.warns(DeprecationWarning, match=r"Pass max_accuracy_drop=0.5 \(points\)"):
        result = tfopt.convert(model, mode="int8", engine="litert_quantizer", calibration=calibration,
                               float_fallback="auto", validation=validation, max_accuracy_drop_fraction=0.005,
                               check_delegation=False)
    assert result.fallback_search["max_accuracy_drop"] == 0.5
    with pytest.raises(ValueError, match="not both"):
        tfopt.convert(model, mode="int8", engine="litert_quantizer", calibration=calibration, float_fallback="auto",
                      validation=validation, max_accuracy_drop=0.5, max_accuracy_drop_fraction=0.005)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        points = tfopt.convert(model, mode="int8", engine="litert_quantizer", calibration=calibration,
                               float_fallback="auto", validation=validation, max_accuracy_drop=0.5,
                               check_delegation=False)
    assert points.tflite == result.tflite and points.fallback_search["max_accuracy_drop"] == 0.5


def test_inspect_reports_int4_weights(digits_cnn):
    model, calibration, _, _ = digits_cnn
    result = tfopt.convert(model, layer_precision={"fc1": "int4"}, calibration=calibration, check_delegation=False)
    weights = {w.name: w for w in result.inspection.weights if w.dtype == "INT4"}
    assert len(weights) == 1
    (w,) = weights.values()
    assert w.num_elements == 64 * 7 * 7 * 128 and 2 <= w.num_unique <= 16  # unpacked nibbles: at most 16 values
    fc_ops = [op for op in result.inspection.ops if op.name == "FULLY_CONNECTED"]
    assert [op.precision for op in fc_ops] == ["int4", "int8"]
    dynamic = tfopt.convert(model, mode="int4", engine="litert_quantizer", check_delegation=False)
    assert set(dynamic.inspection.precision_counts) <= {"hybrid-int4", "float32"}


def test_runtime_support_table_on_digits(digits_cnn):
    from tfopt.export.precision_support import runtime_support

    model, calibration, _, _ = digits_cnn
    rows = runtime_support(model, calibration=calibration, precisions=("int8", "int4", "int16x8"),
                           other_configs=("dynamic_int4_block32",), num_runs=5)
    table = {(r["op"], r["precision"]): r for r in rows}
    assert table[("FULLY_CONNECTED", "int4")]["written"] == "int4" and table[("FULLY_CONNECTED", "int4")]["xnnpack"]
    assert table[("CONV_2D", "int4")]["written"] == "int4" and table[("CONV_2D", "int4")]["xnnpack"] is False
    assert table[("CONV_2D", "int8")]["xnnpack"] and table[("CONV_2D", "int16x8")]["xnnpack"] is False
    assert table[("CONV_2D", "dynamic_int4_block32")]["error"] and table[("CONV_2D", "dynamic_int4_block32")]["written"] is None
    assert table[("FULLY_CONNECTED", "dynamic_int4_block32")]["written"] == "hybrid-int4"


# --- the CLI -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_files(trained_cnn, mnist, tmp_path_factory):
    folder = tmp_path_factory.mktemp("precision_cli")
    model, _ = trained_cnn
    model.save(folder / "model.keras")
    np.savez(folder / "data.npz", x_train=mnist.x_train[:300], x_test=mnist.x_test[:300], y_test=mnist.y_test[:300])
    return folder


def test_cli_convert_layer_precision_rules_and_auto(cli_files, tmp_path, capsys):
    from tfopt import cli

    base = ["convert", str(cli_files / "model.keras"), "--calibration", str(cli_files / "data.npz"),
            "--num_samples", "100"]
    status = cli.main([*base, "--layer_precision", "fc1=int4,re:conv.*=int8,default=int8",
                       "--output", str(tmp_path / "rules.tflite"), "--json", str(tmp_path / "rules.json")])
    assert status == 0
    report = json.loads((tmp_path / "rules.json").read_text())
    assert report["layer_precision"]["map"] == {"conv1": "int8", "conv2": "int8", "fc1": "int4", "logits": "int8"}
    status = cli.main([*base, "--layer_precision", "auto", "--max_accuracy_drop", "1",
                       "--output", str(tmp_path / "auto.tflite"), "--json", str(tmp_path / "auto.json")])
    assert status == 0
    report = json.loads((tmp_path / "auto.json").read_text())
    assert report["layer_precision"]["search"]["final"]["drop_points"] <= 1.0
    assert LayerPrecisionConfig.from_dict(report["layer_precision"]["chosen"]).rules  # the map, reusable
    capsys.readouterr()
    status = cli.main([*base, "--layer_precision", "auto", "--max_size_kb", "4", "--max_accuracy_drop", "0",
                       "--output", str(tmp_path / "none.tflite")])
    assert status == 3 and "cannot meet" in capsys.readouterr().err
    assert not (tmp_path / "none.tflite").exists()


def test_cli_convert_max_accuracy_drop_is_points_and_fraction_is_deprecated(cli_files, tmp_path, capsys):
    from tfopt import cli

    base = ["convert", str(cli_files / "model.keras"), "--calibration", str(cli_files / "data.npz"),
            "--num_samples", "100", "--mode", "int8", "--engine", "litert_quantizer", "--float_fallback", "auto"]
    assert cli.main([*base, "--max_accuracy_drop", "0.5", "--output", str(tmp_path / "a.tflite"),
                     "--json", str(tmp_path / "a.json")]) == 0
    assert json.loads((tmp_path / "a.json").read_text())["fallback_search"]["max_accuracy_drop"] == 0.5
    capsys.readouterr()
    assert cli.main([*base, "--max_accuracy_drop_fraction", "0.005", "--output", str(tmp_path / "b.tflite"),
                     "--json", str(tmp_path / "b.json")]) == 0
    assert "use --max_accuracy_drop 0.5" in capsys.readouterr().err
    assert json.loads((tmp_path / "b.json").read_text())["fallback_search"]["max_accuracy_drop"] == 0.5
    assert cli.main([*base, "--max_accuracy_drop", "150", "--output", str(tmp_path / "c.tflite")]) == 2


# --- 1x1 convolutions as FULLY_CONNECTED -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pointwise_cnn(mnist):
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="stem")(inputs)
    h = keras.layers.Conv2D(32, 1, use_bias=False, name="pw")(h)
    h = keras.layers.BatchNormalization(name="pw_bn")(h)
    h = keras.layers.ReLU(6.0, name="pw_relu")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(h))
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(mnist.x_train[:2000], mnist.y_train[:2000], epochs=2, batch_size=64, verbose=0)
    return model


def test_pointwise_as_dense_is_exact_and_runs_int4_on_xnnpack(pointwise_cnn, mnist):
    from conftest import assert_weights_unchanged, weights_snapshot
    from tfopt.export.precision_layout import conv1x1_as_dense

    model = pointwise_cnn
    snapshot = weights_snapshot(model)
    new, names = conv1x1_as_dense(model)
    assert names == ["pw"] and type(new.get_layer("pw")).__name__ == "Dense"
    x = mnist.x_test[:64]
    np.testing.assert_allclose(model.predict(x, verbose=0), new.predict(x, verbose=0), atol=1e-4)
    assert_weights_unchanged(model, snapshot)
    calibration = tfopt.calibration_data(mnist.x_train, model=model, num_samples=100, seed=0)
    dense = tfopt.convert(model, layer_precision={"pw": "int4"}, calibration=calibration)
    conv = tfopt.convert(model, layer_precision=LayerPrecisionConfig(rules={"pw": "int4"}, pointwise_as_dense=False),
                         calibration=calibration)
    assert dense.layer_precision["pointwise_as_dense"] == ["pw"] and conv.layer_precision["pointwise_as_dense"] == []
    assert dense.layer_precision["layers"]["pw"]["ops"] == ["FULLY_CONNECTED"]
    assert conv.layer_precision["layers"]["pw"]["ops"] == ["CONV_2D"]
    assert dense.layer_precision["layers"]["pw"]["written"] == conv.layer_precision["layers"]["pw"]["written"] == "int4"
    assert dense.layer_precision["layers"]["pw"]["xnnpack"] is True
    assert conv.layer_precision["layers"]["pw"]["xnnpack"] is False
    float_accuracy = tfopt.evaluate(tfopt.convert(model, check_delegation=False), (mnist.x_test, mnist.y_test)).value
    assert tfopt.evaluate(dense, (mnist.x_test, mnist.y_test)).value >= float_accuracy - 0.03


def test_layer_precision_is_a_recipe_step_through_apply(digits_cnn, mnist):
    """Per-layer precision is a PTQConfig field: a recipe (and so optimize) writes it through apply alone, and the
    stored step round-trips through to_dict / from_dict."""
    model, calibration, _, _ = digits_cnn
    step = tfopt.PTQConfig(layer_precision={"fc1": "int4"})
    assert step.engine == "litert_quantizer"  # the engine that writes per-layer precision
    again = tfopt.Config.from_dict(step.to_dict())
    assert again == step and again.to_dict()["version"] == 3
    result = tfopt.apply(model, again, data=(mnist.x_train[:200], mnist.y_train[:200]), calibration=calibration)
    assert result.layer_precision["layers"]["fc1"]["written"] == "int4"
    assert result.inspection.weight_dtypes["INT4"] == 64 * 7 * 7 * 128 // 2
    with pytest.raises(tfopt.TfoptError, match="max_size_kb bounds layer_precision='auto'"):
        tfopt.PTQConfig(layer_precision={"fc1": "int4"}, max_size_kb=10)
    with pytest.raises(tfopt.TfoptError, match="layer_precision must be"):
        tfopt.PTQConfig(layer_precision=4)
