"""export_micro: TFLite Micro runs the model, outputs match LiteRT, C files compile; unsupported ops listed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from tfopt.export.convert import convert
from tfopt.export.micro import c_source, export_micro, resolver_method


@pytest.fixture(scope="module")
def digits_int8():
    """A small CNN trained on sklearn's real 8x8 digits, converted to full int8 (int8 I/O)."""
    import keras

    import tfopt

    data = tfopt.load_dataset("digits")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1), name="digit"),
            keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(10, name="logits"),
        ]
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(data.x_train, data.y_train, epochs=4, verbose=0)
    tflite = convert(
        model,
        mode="int8",
        calibration=data.x_train[:100],
        input_type="int8",
        output_type="int8",
    )
    return tflite, data


@pytest.fixture(scope="module")
def unsupported_float():
    """A float32 model with ops TFLite Micro has no kernel for (REDUCE_PROD, TOPK_V2)."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, 16], tf.float32)])
    def head(x):
        scores = tf.nn.relu(x) * tf.math.reduce_prod(x)
        values, _ = tf.math.top_k(scores, k=3)
        return values

    return tf.lite.TFLiteConverter.from_concrete_functions(
        [head.get_concrete_function()], head
    ).convert()


def test_export_micro_int8_runs_matches_litert_and_compiles(digits_int8, tmp_path):
    tflite, data = digits_int8
    result = export_micro(
        tflite, tmp_path, name="digits", data=(data.x_test, data.y_test), num_samples=60
    )
    assert result.ok and result.unsupported_ops == ()
    assert result.ops == ("CONV_2D", "RESHAPE", "FULLY_CONNECTED")
    assert result.num_samples == 60 and result.diff_unit == "quantization steps"
    assert (
        result.max_abs_diff_vs_litert <= 1
        and result.max_abs_diff_vs_litert_xnnpack <= 1
    )
    assert 0 < result.arena_bytes < 64 * 1024
    assert result.flash_bytes == len(tflite.tflite)
    source = (tmp_path / "digits_model_data.cc").read_text()
    header = (tmp_path / "digits_model_data.h").read_text()
    assert "alignas(16) const unsigned char digits_tflite[] = {" in source
    assert f"const unsigned int digits_tflite_len = {len(tflite.tflite)};" in source
    assert (
        "#define DIGITS_TENSOR_ARENA_BYTES" in header
        and "resolver.AddConv2D();" in header
    )
    assert set(result.to_dict()) >= {
        "ops",
        "unsupported_ops",
        "arena_bytes",
        "flash_bytes",
        "max_abs_diff_vs_litert",
    }
    if shutil.which("g++") is None:
        pytest.skip("no C++ compiler to build the array")
    (tmp_path / "main.cc").write_text(
        '#include <cstdio>\n#include <cstdint>\n#include "digits_model_data.h"\n'
        "int main() { unsigned long sum = 0; for (unsigned i = 0; i < digits_tflite_len; ++i) sum += digits_tflite[i];\n"
        '  std::printf("%u %lu %d\\n", digits_tflite_len, sum, (int)(reinterpret_cast<uintptr_t>(digits_tflite) % 16)); }\n'
    )
    exe = tmp_path / "check"
    subprocess.run(
        [
            "g++",
            "-std=c++11",
            str(tmp_path / "main.cc"),
            str(tmp_path / "digits_model_data.cc"),
            "-o",
            str(exe),
        ],
        check=True,
    )
    length, checksum, misalignment = subprocess.run(
        [str(exe)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert int(length) == len(tflite.tflite)
    assert int(checksum) == int(
        np.frombuffer(tflite.tflite, np.uint8).astype(np.int64).sum()
    )
    assert misalignment == "0"


def test_export_micro_lists_unsupported_ops_with_fixes(unsupported_float, tmp_path):
    result = export_micro(unsupported_float, tmp_path / "out", name="head")
    assert not result.ok
    assert {u.op for u in result.unsupported_ops} == {"REDUCE_PROD", "TOPK_V2"}
    assert all(u.fix and u.nodes for u in result.unsupported_ops)
    assert result.files == () and not (tmp_path / "out").exists()
    assert "TOPK_V2" in result.summary() and "fix:" in result.summary()
    written = export_micro(
        unsupported_float, tmp_path / "out", name="head", write_unsupported=True
    )
    assert len(written.files) == 3 and all(os.path.exists(p) for p in written.files)
    assert (tmp_path / "out" / "head.tflite").read_bytes() == unsupported_float  # the exact flatbuffer


def test_export_micro_hybrid_model_suggests_int8(tmp_path, tiny_cnn):
    dynamic = convert(tiny_cnn, mode="dynamic")
    assert dynamic.inspection.precision_counts.get(
        "hybrid"
    )  # the 512x4 Dense weights are int8, activations float
    result = export_micro(dynamic, tmp_path, name="tiny")
    assert [u.op for u in result.unsupported_ops] == ["FULLY_CONNECTED"]
    assert (
        "hybrid" in result.unsupported_ops[0].fix
        and "mode='int8'" in result.unsupported_ops[0].fix
    )


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"name": "3model"}, ValueError, "C identifier"),
        ({"name": "my-model"}, ValueError, "C identifier"),
        ({"num_samples": 0}, ValueError, "num_samples must be"),
        ({"data": [np.zeros((2, 8, 8, 1)), np.zeros((2, 3))]}, ValueError, "1 input"),
    ],
    ids=["digit-first", "dash", "samples", "too-many-arrays"],
)
def test_export_micro_argument_errors(digits_int8, tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        export_micro(digits_int8[0], tmp_path, **kwargs)


def test_export_micro_corrupt_file_is_a_clear_error(digits_int8, tmp_path):
    content = digits_int8[0].tflite
    with pytest.raises(ValueError, match="malformed"):
        export_micro(content[: len(content) // 2], tmp_path)


def test_c_source_round_trips_bytes():
    content = bytes(range(256)) * 3 + b"\x07"
    source, header = c_source(
        content, name="blob", arena_bytes=1000, ops=["CONV_2D", "CUSTOM:Foo"]
    )
    values = [int(v, 16) for v in re.findall(r"0x([0-9a-f]{2})", source)]
    assert bytes(values) == content
    assert "#define BLOB_TENSOR_ARENA_BYTES 2048" in header
    assert "extern const unsigned char blob_tflite[];" in header
    assert 'AddCustom("Foo"' in header


@pytest.mark.parametrize(
    "op, method",
    [
        ("CONV_2D", "AddConv2D()"),
        ("MAX_POOL_2D", "AddMaxPool2D()"),
        ("FULLY_CONNECTED", "AddFullyConnected()"),
        ("SELECT_V2", "AddSelectV2()"),
        ("PADV2", "AddPadV2()"),
    ],
    ids=lambda v: str(v),
)
def test_resolver_method_names(op, method):
    assert resolver_method(op) == method


def test_cli_export_micro_json_and_exit_codes(digits_int8, unsupported_float, tmp_path):
    from tfopt import cli

    tflite, data = digits_int8
    model_path, bad_path = tmp_path / "digits-v1.tflite", tmp_path / "head.tflite"
    model_path.write_bytes(tflite.tflite)
    bad_path.write_bytes(unsupported_float)
    data.to_npz(str(tmp_path / "data.npz"))
    report = tmp_path / "r.json"
    argv = ["--output", str(tmp_path / "c"), "--json", str(report)]
    assert cli.main(["export-micro", str(model_path), *argv, "--data", str(tmp_path / "data.npz"),
                     "--num_samples", "20"]) == 0
    payload = json.loads(report.read_text())
    assert payload["ok"] and payload["unsupported_ops"] == [] and payload["arena_bytes"] > 0
    assert payload["max_abs_diff_vs_litert"] <= 1 and payload["num_samples"] == 20
    assert (tmp_path / "c" / "digits_v1_model_data.cc").exists()
    assert (tmp_path / "c" / "digits_v1.tflite").read_bytes() == tflite.tflite  # nothing compresses; a chain ties
    assert cli.main(["export-micro", str(model_path), "--output", str(tmp_path / "plain"), "--json", str(report),
                     "--nocompress", "--noplan_memory", "--num_samples", "5"]) == 0
    payload = json.loads(report.read_text())
    assert payload["plan"] is None and payload["compressed_tensors"] == []
    assert (tmp_path / "plain" / "digits_v1.tflite").read_bytes() == tflite.tflite
    assert cli.main(["export-micro", str(bad_path), *argv]) == 1
    assert {u["op"] for u in json.loads(report.read_text())["unsupported_ops"]} == {"REDUCE_PROD", "TOPK_V2"}