"""QAT rounds where LiteRT's int8 kernels round: swish, sigmoid, Normalization, offset Rescaling, grouped convolutions."""

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

from tfopt.compress import qat_layers
from tfopt.compress.qat import qat, qat_summary, strip_qat

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
layers = keras.layers


@pytest.fixture(scope="module")
def pixels():
    """Real digits as 8x8x1 pixels in [0, 255] (train, labels, test, labels)."""
    digits = load_digits()
    x = (digits.images * (255.0 / 16.0)).astype("float32")[..., None]
    return x[:1400], digits.target[:1400], x[1400:1600], digits.target[1400:1600]


def _squeeze_excite_net():
    """An EfficientNet-style network: offset Rescaling, Normalization, swish, squeeze-and-excite, residual."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="rescale")(inputs)
    x = layers.Normalization(mean=[-0.5], variance=[0.4], name="normalize")(x)
    x = layers.Activation("swish", name="stem_act")(layers.BatchNormalization()(
        layers.Conv2D(16, 3, padding="same", use_bias=False, name="stem")(x)))
    shortcut = x
    x = layers.Activation("swish", name="expand_act")(layers.BatchNormalization()(
        layers.Conv2D(48, 1, use_bias=False, name="expand")(x)))
    x = layers.Activation("swish", name="dw_act")(layers.BatchNormalization()(
        layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)))
    se = layers.Reshape((1, 1, 48))(layers.GlobalAveragePooling2D(name="squeeze")(x))
    se = layers.Conv2D(8, 1, activation="swish", name="se_reduce")(se)
    se = layers.Conv2D(48, 1, activation="sigmoid", name="se_expand")(se)
    x = layers.Multiply(name="excite")([x, se])
    x = layers.BatchNormalization()(layers.Conv2D(16, 1, use_bias=False, name="project")(x))
    x = layers.GlobalAveragePooling2D()(layers.Add()([shortcut, x]))
    return keras.Model(inputs, layers.Dense(10, name="logits")(x), name="squeeze_excite")


def _convnext_net():
    """A ConvNeXt-style network: a grouped 7x7 convolution (groups = channels), LayerNormalization, GELU."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = layers.Conv2D(16, 2, strides=2, name="stem")(layers.Rescaling(1 / 255.0, name="rescale")(inputs))
    shortcut = x
    x = layers.Conv2D(16, 7, padding="same", groups=16, name="grouped")(x)
    x = layers.LayerNormalization(epsilon=1e-6, name="norm")(x)
    x = layers.Dense(32, name="pointwise_1")(x)
    x = layers.Activation("gelu", name="gelu")(x)
    x = layers.Dense(16, name="pointwise_2")(x)
    x = layers.Add(name="residual")([shortcut, layers.Activation("linear", name="identity")(x)])
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(10, name="logits")(x), name="convnext_style")


def _trained(model, pixels, epochs: int):
    from tfopt.compress.batchnorm import reestimate_batchnorm

    x, y = pixels[0], pixels[1]
    model.compile(keras.optimizers.Adam(3e-3), LOSS)
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    if any(isinstance(layer, layers.BatchNormalization) for layer in model.layers):
        model = reestimate_batchnorm(model, x[:256], batch_size=32)
    return model


def _qat_and_parity(model, pixels):
    from tfopt.export.convert import convert
    from tfopt.measure.parity import compare

    x, y, x_test, y_test = pixels
    wrapped = qat(model)
    wrapped.compile(keras.optimizers.Adam(1e-4), LOSS)
    wrapped.fit(x[:320], y[:320], epochs=1, batch_size=32, verbose=0)
    tflite = convert(wrapped, mode="int8", calibration=x[:64], check_delegation=False)
    assert not tflite.inspection.float_compute_ops
    return wrapped, compare(wrapped, tflite, (x_test, y_test), localize=False)


def test_qat_layers_for_composite_and_fixed_range_activations():
    wrapped = qat(_squeeze_excite_net())
    kinds = {layer.name: layer for layer in wrapped.layers}
    assert isinstance(kinds["rescale"], qat_layers.AffineQuantizeWrapper)  # MUL then ADD in LiteRT
    assert isinstance(kinds["normalize"], qat_layers.AffineQuantizeWrapper)  # SUB then MUL
    assert isinstance(kinds["stem_act"], qat_layers.QuantizedActivation)  # LOGISTIC then MUL
    expand = kinds["se_expand"]  # CONV_2D, then LOGISTIC on the runtime's fixed 1/256 grid
    assert expand.pre_activation_quantizer is not None
    assert expand.output_quantizer.fixed_range == (0.0, 255.0 / 256.0)
    assert kinds["se_reduce"].pre_activation_quantizer is not None and kinds["se_reduce"].output_quantizer.fixed_range is None
    assert kinds["expand"].pre_activation_quantizer is None  # no activation of its own: nothing between
    plain = qat(keras.Sequential([keras.Input((4,)), layers.Rescaling(0.5, name="half"), layers.Dense(2, name="fc")]))
    assert not isinstance(plain.get_layer("half"), qat_layers.AffineQuantizeWrapper)  # one MUL: one range


def test_qat_swish_and_squeeze_excite_match_their_int8_tflite(pixels):
    model = _trained(_squeeze_excite_net(), pixels, epochs=3)
    wrapped, parity = _qat_and_parity(model, pixels)
    # Measured here: 34.8 dB and 100 % agreement; 31.5 dB and 98.5 % when Keras did not round between
    # Rescaling's MUL and ADD, Normalization's SUB and MUL, a kernel and its sigmoid, or on swish's sigmoid.
    assert parity.reference_accuracy >= 0.8, parity.summary()
    assert parity.outputs[0].snr_db >= 33.0, parity.summary()
    assert parity.top1_agreement >= 0.99, parity.summary()


def test_qat_grouped_convolution_runs_as_depthwise_and_converts_to_int8(pixels):
    model = _trained(_convnext_net(), pixels, epochs=3)
    wrapped = qat(model)
    summary = qat_summary(wrapped)
    assert not summary.kept_float, summary.kept_float
    assert any("grouped" in rewrite and "DepthwiseConv2D" in rewrite for rewrite in summary.rewrites)
    assert "identity" not in {layer.name for layer in wrapped.layers if "quant" in layer.name}
    # Before training the ranges, strip gives back the float computation: the depthwise kernel is the
    # grouped one, transposed.
    stripped = strip_qat(wrapped)
    assert type(stripped.get_layer("grouped")).__name__ == "DepthwiseConv2D"
    np.testing.assert_allclose(stripped.predict(pixels[2], verbose=0), model.predict(pixels[2], verbose=0),
                               rtol=1e-4, atol=1e-4)
    _, parity = _qat_and_parity(model, pixels)
    assert parity.reference_accuracy >= 0.8, parity.summary()
    assert parity.top1_agreement >= 0.98, parity.summary()


def test_new_qat_layers_save_load_and_strip(tmp_path, pixels):
    wrapped = qat(_squeeze_excite_net())
    wrapped.compile(keras.optimizers.Adam(1e-4), LOSS)
    wrapped.fit(pixels[0][:64], pixels[1][:64], epochs=1, batch_size=32, verbose=0)
    path = str(tmp_path / "se.keras")
    wrapped.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(pixels[2], verbose=0), wrapped.predict(pixels[2], verbose=0), atol=1e-5)
    assert qat_summary(loaded).uninitialized_ranges == 0  # fixed-range quantizers have no range to learn
    stripped = strip_qat(loaded)
    kinds = {layer.name: type(layer).__name__ for layer in stripped.layers}
    assert kinds["stem_act"] == "Activation" and kinds["normalize"] == "Normalization" and kinds["rescale"] == "Rescaling"
    assert not any("Quantiz" in kind for kind in kinds.values())


@pytest.mark.parametrize("statistics", ["batch", "moving"])
def test_folded_batchnorm_trains_on_batch_statistics_and_infers_on_moving_ones(pixels, statistics):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = layers.BatchNormalization(momentum=0.5, name="bn")(layers.Conv2D(8, 3, use_bias=False, name="conv")(
        layers.Rescaling(1 / 255.0, name="scale")(inputs)))
    model = keras.Model(inputs, x)  # moving statistics at their start (mean 0, variance 1): far from the data's
    wrapped = qat(model)
    wrapper = wrapped.get_layer("conv")
    assert wrapper.batchnorm is not None and wrapper.batchnorm_statistics == "batch"  # the default
    wrapper.batchnorm_statistics = statistics
    batch = pixels[0][:128]
    got = wrapped(batch, training=True)
    stored = model.get_layer("bn").moving_mean.numpy()
    np.testing.assert_array_equal(stored, np.zeros_like(stored))  # the caller's BatchNorm is not touched
    moved = float(np.max(np.abs(wrapper.batchnorm.moving_mean.numpy())))
    assert (moved > 0.0) == (statistics == "batch")  # the moving statistics follow the batches, or stay frozen
    expected = model(batch, training=statistics == "batch")  # float Conv + BatchNorm, as Keras trains it
    scale = float(np.std(expected))
    assert float(np.max(np.abs(got - expected))) < 0.1 * scale  # int8 weights and output: small steps only
    inference = wrapped(batch, training=False)  # always the moving statistics
    bn = wrapper.batchnorm
    folded = (model.get_layer("conv")(model.get_layer("scale")(batch)) - bn.moving_mean) * (
        bn.gamma / np.sqrt(bn.moving_variance + bn.epsilon)) + bn.beta
    assert float(np.max(np.abs(inference - folded))) < 0.1 * float(np.std(folded))
