"""tfopt._keras.load_model: the matching Keras per file, and no code from a file runs without the opt-in.

Every format and flavour gets a hostile Lambda that creates a marker file when it
runs; the marker must never appear unless the caller passes `safe_mode=False`.
"""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest

from tfopt import _keras
from tfopt.errors import InvalidArgumentError, MissingFileError, UnsafeModelError

# (flavour, format) pairs: every way a Keras model reaches tfopt as a file.
CASES = [("keras3", ".keras"), ("keras3", ".h5"), ("tf_keras", ".keras"), ("tf_keras", ".h5"),
         ("tf_keras", "savedmodel")]
IDS = [f"{flavor}-{fmt.strip('.')}" for flavor, fmt in CASES]


def _keras_of(flavor: str):
    return _keras.keras_module(flavor)


def _hostile_lambda(marker: str):
    # Runs whenever Keras calls the layer, including while it rebuilds the model from a file.
    return eval(f"lambda t: (open({marker!r}, 'a').close(), t)[1]")  # noqa: S307 - test payload


def _save(model, flavor: str, fmt: str, folder) -> str:
    if fmt == "savedmodel":
        path = os.path.join(folder, "model_savedmodel")
        model.save(path, save_format="tf")
    else:
        path = os.path.join(folder, "model" + fmt)
        model.save(path)
    return path


def _model(flavor: str, *, marker: str | None = None):
    keras = _keras_of(flavor)
    inputs = keras.Input((4,), name="x")
    x = keras.layers.Dense(3, name="dense")(inputs)
    if marker is not None:
        x = keras.layers.Lambda(_hostile_lambda(marker), name="evil")(x)
    return keras.Model(inputs, x, name="small")


@pytest.fixture()
def marker(tmp_path):
    return str(tmp_path / "MARKER_code_ran")


@pytest.mark.parametrize("flavor,fmt", CASES, ids=IDS)
def test_load_model_hostile_lambda_refused_without_running(flavor, fmt, marker, tmp_path):
    path = _save(_model(flavor, marker=marker), flavor, fmt, tmp_path)
    if os.path.exists(marker):
        os.remove(marker)  # building and saving called the layer; only loading counts here
    with pytest.raises(UnsafeModelError, match=r"'evil' \(Lambda layer") as caught:
        _keras.load_model(path)
    assert "safe_mode=False" in str(caught.value) and "--unsafe" in str(caught.value)
    assert "\n" not in str(caught.value)
    assert not os.path.exists(marker)


@pytest.mark.parametrize("flavor,fmt", CASES, ids=IDS)
def test_load_model_hostile_lambda_runs_only_with_opt_in(flavor, fmt, marker, tmp_path):
    path = _save(_model(flavor, marker=marker), flavor, fmt, tmp_path)
    if os.path.exists(marker):
        os.remove(marker)
    loaded = _keras.load_model(path, safe_mode=False)
    loaded(np.zeros((1, 4), np.float32))
    assert os.path.exists(marker)
    assert _keras.keras_flavor(loaded) == flavor


@pytest.mark.parametrize("flavor,fmt", [c for c in CASES if c[1] != "savedmodel"],
                         ids=[i for c, i in zip(CASES, IDS) if c[1] != "savedmodel"])
def test_convert_hostile_file_refused(flavor, fmt, marker, tmp_path):
    from tfopt.export.convert import convert

    path = _save(_model(flavor, marker=marker), flavor, fmt, tmp_path)
    if os.path.exists(marker):
        os.remove(marker)
    with pytest.raises(UnsafeModelError, match="evil"):
        convert(path)
    assert not os.path.exists(marker)


def test_convert_savedmodel_reads_graph_without_python(marker, tmp_path):
    from tfopt.export.convert import convert

    path = _save(_model("tf_keras", marker=marker), "tf_keras", "savedmodel", tmp_path)
    os.remove(marker)  # tracing at save time ran the layer
    result = convert(path)
    assert len(result.tflite) > 0
    assert not os.path.exists(marker)


@pytest.mark.parametrize("flavor,fmt", CASES, ids=IDS)
def test_load_model_matching_keras_same_outputs(flavor, fmt, tmp_path):
    model = _model(flavor)
    path = _save(model, flavor, fmt, tmp_path)
    loaded = _keras.load_model(path)
    assert _keras.keras_flavor(loaded) == flavor
    x = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), rtol=1e-6)


def test_read_model_file_flavour_from_metadata(tmp_path):
    path = _save(_model("tf_keras"), "tf_keras", ".keras", tmp_path)
    info = _keras.read_model_file(path)
    assert (info.kind, info.flavor) == ("keras", "tf_keras")
    assert info.keras_version.startswith("2.")


def _bad_files(tmp_path):
    good = _save(_model("keras3"), "keras3", ".keras", tmp_path)
    good_h5 = _save(_model("tf_keras"), "tf_keras", ".h5", tmp_path)
    content, content_h5 = open(good, "rb").read(), open(good_h5, "rb").read()
    weights = os.path.join(tmp_path, "weights_only.h5")
    model = _model("tf_keras")
    model.save_weights(weights)
    no_config = os.path.join(tmp_path, "no_config.keras")
    with zipfile.ZipFile(no_config, "w") as archive:
        archive.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
    bad_json = os.path.join(tmp_path, "bad_json.keras")
    with zipfile.ZipFile(bad_json, "w") as archive:
        archive.writestr("config.json", "{not json")
    files = {
        "empty.keras": b"", "text.keras": b"a text file, not a model\n", "truncated.keras": content[: len(content) // 3],
        "empty.h5": b"", "text.h5": b"hello", "truncated.h5": content_h5[: len(content_h5) // 3],
    }
    paths = {}
    for name, data in files.items():
        paths[name] = os.path.join(tmp_path, name)
        with open(paths[name], "wb") as handle:
            handle.write(data)
    paths.update({"weights_only.h5": weights, "no_config.keras": no_config, "bad_json.keras": bad_json})
    return paths


def test_load_model_not_a_model_file_clear_error(tmp_path):
    for name, path in _bad_files(tmp_path).items():
        with pytest.raises(InvalidArgumentError, match="not a Keras model file") as caught:
            _keras.load_model(path)
        message = str(caught.value)
        assert path in message and "Expected" in message and "\n" not in message, name
        assert not isinstance(caught.value, FileNotFoundError), name


def test_load_model_missing_and_unsupported_paths(tmp_path):
    with pytest.raises(MissingFileError, match="not found"):
        _keras.load_model(tmp_path / "absent.keras")
    other = tmp_path / "model.onnx"
    other.write_bytes(b"x")
    with pytest.raises(InvalidArgumentError, match="expected a .keras or .h5 file"):
        _keras.load_model(other)
    with pytest.raises(InvalidArgumentError, match="without saved_model.pb"):
        _keras.load_model(tmp_path)
    with pytest.raises(TypeError, match="safe_mode must be True or False"):
        _keras.load_model(other, safe_mode="no")


def test_load_model_plain_savedmodel_points_to_convert(tmp_path):
    import tensorflow as tf

    module = tf.Module()
    module.scale = tf.Variable(2.0)
    module.f = tf.function(lambda x: x * module.scale, input_signature=[tf.TensorSpec([None], tf.float32)])
    folder = str(tmp_path / "plain")
    tf.saved_model.save(module, folder)
    with pytest.raises(InvalidArgumentError, match=r"without Keras metadata.*tfopt.convert"):
        _keras.load_model(folder)


@pytest.mark.parametrize(
    "node,expected",
    [
        ({"class_name": "Lambda", "config": {"name": "l"}}, "Lambda layer"),
        ({"class_name": "Dense", "name": "d", "config": {"activation": {"class_name": "__lambda__"}}}, "lambda"),
        ({"class_name": "TFOpLambda", "config": {"name": "w", "function": "io.write_file"}}, "tf.io.write_file"),
        ({"class_name": "TFOpLambda", "config": {"name": "p", "function": "py_function"}}, "py_function"),
        ({"class_name": "TFOpLambda", "config": {"name": "r", "function": "raw_ops.WriteFile"}}, "WriteFile"),
        ({"class_name": "ClassMethod", "config": {"name": "c", "cls_symbol": "io.gfile.GFile", "method_name": "x"}},
         "ClassMethod"),
        ({"class_name": "InstanceMethod", "config": {"name": "i", "attr_name": "__reduce__"}}, "private attribute"),
        ({"class_name": "Evil", "module": "os", "registered_name": "Evil", "config": {"name": "e"}}, "module 'os'"),
    ],
    ids=["lambda", "stored-lambda", "tfop-io", "tfop-py-function", "tfop-raw-ops", "class-method",
         "instance-private", "foreign-module"],
)
def test_unsafe_objects_flags(node, expected):
    found = _keras.unsafe_objects([{"class_name": "Functional", "config": {"layers": [node]}}])
    assert len(found) == 1 and expected in found[0]


@pytest.mark.parametrize(
    "node",
    [
        {"class_name": "TFOpLambda", "config": {"function": "__operators__.add"}},
        {"class_name": "TFOpLambda", "config": {"function": "math.multiply"}},
        {"class_name": "TFOpLambda", "config": {"function": "compat.v1.nn.relu"}},
        {"class_name": "TFOpLambda", "config": {"function": "reshape"}},
        {"class_name": "SlicingOpLambda", "config": {"function": "__operators__.getitem"}},
        {"class_name": "InstanceProperty", "config": {"attr_name": "shape"}},
        {"class_name": "Dense", "module": "keras.layers", "config": {}},
        {"class_name": "PruneWrapper", "module": "tfopt.compress.prune", "config": {}},
        {"class_name": "function", "module": "builtins", "config": "relu"},
    ],
    ids=["add", "math", "compat-nn", "reshape", "getitem", "property", "keras", "tfopt", "builtin-fn"],
)
def test_unsafe_objects_allows_pure_layers(node):
    assert _keras.unsafe_objects([node]) == []


def test_unsafe_objects_registered_custom_class_allowed():
    node = {"class_name": "Mine", "module": "my_package.layers", "registered_name": "my_package>Mine"}
    assert _keras.unsafe_objects([node]) != []
    assert _keras.unsafe_objects([node], is_registered=lambda name: name == "my_package>Mine") == []


def test_load_model_custom_objects_count_as_registered(tmp_path):
    import keras

    class Doubler(keras.layers.Layer):
        def call(self, x):
            return x * 2

    inputs = keras.Input((3,))
    model = keras.Model(inputs, Doubler(name="doubler")(inputs))
    path = str(tmp_path / "custom.keras")
    model.save(path)
    config = _keras.read_model_file(path).configs[0]
    (layer,) = [entry for entry in config["config"]["layers"] if entry["name"] == "doubler"]
    assert not layer["module"].startswith(("keras", "tfopt"))  # a class from the test module
    with pytest.raises(UnsafeModelError, match="doubler"):
        _keras.load_model(path)
    loaded = _keras.load_model(path, custom_objects={"Doubler": Doubler})
    np.testing.assert_allclose(np.asarray(loaded(np.ones((1, 3), np.float32))), 2.0)


def test_read_model_file_hostile_archives(tmp_path):
    deep = tmp_path / "deep.keras"
    with zipfile.ZipFile(deep, "w") as archive:
        archive.writestr("config.json", "[" * 200_000 + "]" * 200_000)
    with pytest.raises(InvalidArgumentError, match="not a Keras model file"):
        _keras.load_model(deep)
    nested: dict = {"class_name": "Lambda", "config": {"name": "deep_evil"}}
    for _ in range(5000):  # deeper than Python's recursion limit
        nested = {"config": {"layers": [nested]}}
    assert _keras.unsafe_objects([nested]) == ["'deep_evil' (Lambda layer: runs Python code stored in the file)"]


def test_read_h5_damaged_file_that_hangs_hdf5_times_out(monkeypatch):
    # Found by bench/bench_fuzz.py: the HDF5 library never returns while reading this model_config.
    path = os.path.join(os.path.dirname(__file__), "fuzz_corpus", "hangs_hdf5_model_config.h5")
    monkeypatch.setattr(_keras, "H5_READ_TIMEOUT", 3.0)
    with pytest.raises(InvalidArgumentError, match="did not finish in 3 s: the file is damaged"):
        _keras.load_model(path)
    good = os.path.join(os.path.dirname(__file__), "fuzz_corpus", "tiny_tf_keras.h5")
    assert _keras.read_model_file(good).flavor == "tf_keras"


def test_read_h5_damaged_weights_are_caught_in_the_child(tmp_path):
    import h5py
    import keras

    keras.utils.set_random_seed(0)
    path = str(tmp_path / "model.h5")
    keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, name="a"), keras.layers.Dense(4)]).save(path)
    with h5py.File(path, "r") as handle:
        headers = []
        handle.visititems(lambda n, o: headers.append(h5py.h5o.get_info(o.id).addr) if isinstance(o, h5py.Dataset) else None)
    content = bytearray(open(path, "rb").read())
    content[headers[0] + 2 : headers[0] + 40] = b"\xff" * 38  # one weight's object header, model_config intact
    damaged = str(tmp_path / "damaged.h5")
    open(damaged, "wb").write(bytes(content))
    with pytest.raises(InvalidArgumentError, match="damaged: the HDF5 library cannot read its weights"):
        _keras.load_model(damaged)
    assert _keras.read_model_file(path).kind == "h5"
