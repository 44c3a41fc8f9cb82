"""TFLite Micro compression: the choice logic on arrays, and clustered models on the real TFLite Micro interpreter."""

from __future__ import annotations

import numpy as np
import pytest

from tfopt.errors import BenchmarkError
from tfopt.export.micro_compress import (
    bits_for,
    choose_compression,
    distinct_per_channel,
    lut_bytes,
)


@pytest.mark.parametrize("n, bits", [(1, 1), (2, 1), (3, 2), (16, 4), (17, 5), (128, 7)], ids=str)
def test_bits_for(n, bits):
    assert bits_for(n) == bits


def test_bits_for_rejects_zero():
    with pytest.raises(ValueError, match="num_values must be >= 1"):
        bits_for(0)


def test_choose_compression_follows_the_quantization_axis():
    rng = np.random.default_rng(0)
    # 32 output channels of 256 weights, each channel with its own 8 values (as per-channel int8 gives)
    w = np.stack([rng.choice(rng.integers(-127, 128, 8), 256) for _ in range(32)]).astype(np.int8)
    assert max(distinct_per_channel(w, 0)) <= 8 < len(np.unique(w))
    choice = choose_compression(w, channel_axis=0)
    assert (choice.mode, choice.axis, choice.bits) == ("per-channel", 0, 3)
    assert choice.estimated_bytes == lut_bytes(w.size, itemsize=1, bits=3, num_tables=32, table_entries=8, num_scales=32)
    assert choice.saved_bytes > w.nbytes // 2
    last = choose_compression(np.ascontiguousarray(w.T), channel_axis=1)  # depthwise kernels: the last axis
    assert (last.mode, last.axis, last.bits) == ("per-channel", 1, 3)
    assert choose_compression(w.reshape(32, 16, 16), channel_axis=1) is None  # the decoder reads axis 0 or last only


@pytest.mark.parametrize(
    "values",
    [
        np.arange(-128, 128, dtype=np.int8).repeat(4).reshape(32, 32),  # 256 distinct values: more than 128
        np.tile(np.arange(-8, 8, dtype=np.int8), 4).reshape(4, 16),  # 64 bytes: the tables cost more than they save
        np.arange(10, dtype=np.int32),  # a bias: every value distinct
    ],
    ids=["too-many-values", "too-small", "bias"],
)
def test_choose_compression_keeps_tensors_that_would_expand(values):
    assert choose_compression(values, channel_axis=0 if values.ndim > 1 else None) is None


@pytest.fixture(scope="module")
def clustered_digits():
    """A CNN trained on real 8x8 digits, its Dense layer clustered to 16 values (tfopt.cluster), full int8."""
    import keras

    import tfopt

    data = tfopt.load_dataset("digits")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu", name="hidden"),
            keras.layers.Dense(10, name="logits"),
        ]
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile("adam", loss)
    model.fit(data.x_train, data.y_train, epochs=4, verbose=0)
    clustered = tfopt.cluster(model, num_clusters=16, include=["hidden"])
    clustered.compile("adam", loss)
    clustered.fit(data.x_train, data.y_train, epochs=1, verbose=0)
    stripped = tfopt.strip(clustered)
    kwargs = {"calibration": data.x_train[:100], "input_type": "int8", "output_type": "int8"}
    return tfopt.convert(stripped, mode="int8", **kwargs).tflite, tfopt.convert(model, mode="int8", **kwargs).tflite, data


def test_clustered_kernel_keeps_16_values_per_channel_after_int8(clustered_digits):
    from tfopt.analyze.flatbuffer_micro import weight_tensors_for_micro

    hidden = [w for w in weight_tensors_for_micro(clustered_digits[0]) if w["name"].endswith("hidden_1/MatMul")]
    assert len(hidden) == 1 and hidden[0]["quantized_dimension"] == 0
    per_channel = distinct_per_channel(hidden[0]["values"], 0)
    assert max(per_channel) <= 16 < len(np.unique(hidden[0]["values"]))


def test_export_micro_compresses_clustered_layer_bit_identical(clustered_digits, tmp_path):
    from tfopt.export.micro import export_micro, flash_bytes

    tflite, _, data = clustered_digits
    result = export_micro(tflite, tmp_path, name="digits", data=data.x_test, num_samples=50)
    assert result.ok and len(result.compressed_tensors) == 1
    choice = result.compressed_tensors[0]
    assert (choice["mode"], choice["bits"], choice["axis"]) == ("per-channel", 4, 0)
    assert "CUSTOM:TFLM_DECODE" in result.ops
    assert result.flash_bytes < result.plain_flash_bytes == len(tflite)
    assert result.flash_bytes == flash_bytes(tflite)
    written = (tmp_path / "digits.tflite").read_bytes()
    assert len(written) == result.flash_bytes
    source = (tmp_path / "digits_model_data.cc").read_text()
    header = (tmp_path / "digits_model_data.h").read_text()
    assert f"digits_tflite_len = {len(written)};" in source
    assert "resolver.AddDecode();" in header and "Device build: compressed weights" in header
    assert any("AddDecode()" in line for line in result.device_build)
    # the decoded kernel lives in the arena: a device trades RAM for flash, and the result says so
    assert result.arena_bytes > result.plain_arena_bytes
    assert "plain int8" in result.summary()


def test_export_micro_writes_incompressible_model_as_given(clustered_digits, tmp_path):
    from tfopt.export.micro import export_micro, flash_bytes

    _, plain, data = clustered_digits  # trained, not clustered: every kernel has > 128 values per channel
    result = export_micro(plain, tmp_path, name="plain", data=data.x_test, num_samples=20, plan_memory=False)
    assert result.ok and result.compressed_tensors == () and result.plan is None
    assert (tmp_path / "plain.tflite").read_bytes() == plain and flash_bytes(plain) == len(plain)
    assert any("no weight tensor compresses" in note for note in result.notes)


def test_export_micro_refuses_a_mismatching_compressed_model(clustered_digits, tmp_path, monkeypatch):
    """One table for a per-channel int8 kernel decodes to wrong values on TFLite Micro: the check must catch it."""
    from tflite_micro.tensorflow.lite.micro.compression import spec
    from tflite_micro.tensorflow.lite.micro.compression.compress import compress

    from tfopt.export import micro

    tflite, _, data = clustered_digits
    good, choices, _ = micro.compress_for_micro(tflite)
    wrong = bytes(
        compress(
            tflite,
            [
                spec.Tensor(
                    subgraph=0,
                    tensor=choices[0]["tensor"],
                    compression=[spec.LookUpTableCompression(index_bitwidth=6, mode=spec.PerTensor())],
                )
            ],
        )
    )
    assert wrong != good
    monkeypatch.setattr(micro, "compress_for_micro", lambda content: (wrong, choices, ""))
    with pytest.raises(BenchmarkError, match="outputs differ from the plain model's.*nothing was written"):
        micro.export_micro(tflite, tmp_path / "out", name="bad", data=data.x_test, num_samples=20)
    assert not (tmp_path / "out").exists()


def test_export_micro_op_tflite_micro_lacks_writes_nothing_even_when_weights_compress(tmp_path):
    """A model TFLite Micro cannot run is reported, not compressed and not written (no false mismatch either)."""
    import keras

    import tfopt
    from tfopt.export.micro import compress_for_micro, export_micro

    data = tfopt.load_dataset("digits")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs))
    x = keras.layers.Dense(32, name="hidden")(x)
    x = keras.layers.Lambda(lambda t: keras.ops.sign(t))(x)  # SIGN: no TFLite Micro kernel
    model = keras.Model(inputs, keras.layers.Dense(10)(x))
    kernel, bias = model.get_layer("hidden").get_weights()
    levels = np.linspace(-0.1, 0.1, 16, dtype="float32")  # 16 shared values, as clustering leaves them
    model.get_layer("hidden").set_weights([levels[np.abs(kernel[..., None] - levels).argmin(-1)], bias])
    tflite = tfopt.convert(model, mode="int8", calibration=data.x_train[:100], input_type="int8",
                           output_type="int8").tflite
    assert compress_for_micro(tflite)[0] is not None  # the Dense kernel would compress
    result = export_micro(tflite, tmp_path / "out", name="sign", data=data.x_test, num_samples=5)
    assert not result.ok and [u.op for u in result.unsupported_ops] == ["SIGN"]
    assert result.compressed_tensors == () and result.plan is None and result.files == ()
    assert not (tmp_path / "out").exists()
