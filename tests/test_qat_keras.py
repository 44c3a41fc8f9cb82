"""The user's own Keras 3 code on a QAT model: optimizer objects, callbacks, GradientTape, save/load, MirroredStrategy."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

from tfopt.compress.qat import has_wrappers, qat, strip_qat

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
_DIGITS = load_digits()
X = (_DIGITS.images[:64] / 16.0).astype("float32")[..., None]  # real 8x8 digits
Y = _DIGITS.target[:64]


def _cnn():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(8, 3, use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name="cnn")


def _ranges(model):
    return {v.path: float(v.numpy()) for v in model.non_trainable_weights if v.path.endswith(("range_min", "range_max"))}


def test_qat_model_trains_with_keras_optimizer_callbacks_and_checkpoint(tmp_path):
    wrapped = qat(_cnn())
    wrapped.compile(keras.optimizers.Adam(1e-3), LOSS, metrics=["accuracy"])
    path = str(tmp_path / "best.keras")
    callbacks = [keras.callbacks.EarlyStopping(monitor="loss", patience=1),
                 keras.callbacks.ModelCheckpoint(path, monitor="loss", save_best_only=True)]
    history = wrapped.fit(X, Y, epochs=2, batch_size=16, verbose=0, callbacks=callbacks)
    assert np.isfinite(history.history["loss"][-1]) and os.path.exists(path)
    ranges = _ranges(wrapped)
    lows = [v for k, v in ranges.items() if k.endswith("range_min")]
    highs = [v for k, v in ranges.items() if k.endswith("range_max")]
    assert all(-6.0 < low <= 0.0 < high != 6.0 for low, high in zip(lows, highs))  # set by the data, zero inside


def test_qat_model_trains_in_a_gradient_tape_loop():
    wrapped = qat(_cnn())
    optimizer = keras.optimizers.SGD(0.05)
    before = [v.numpy().copy() for v in wrapped.trainable_variables]
    for start in range(0, 64, 16):
        with tf.GradientTape() as tape:
            loss = LOSS(Y[start:start + 16], wrapped(X[start:start + 16], training=True))
        grads = tape.gradient(loss, wrapped.trainable_variables)
        assert all(g is not None for g in grads)
        optimizer.apply_gradients(zip(grads, wrapped.trainable_variables))
    assert all(not np.array_equal(b, v.numpy()) for b, v in zip(before, wrapped.trainable_variables))
    assert all(r != 6.0 and r != -6.0 for r in _ranges(wrapped).values())  # ranges set by the data


def _run(code: str, timeout: int = 600) -> dict:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stderr[-3000:]
    return json.loads(lines[-1][7:])


@pytest.mark.slow
def test_qat_model_saved_as_keras_loads_in_a_fresh_process_and_resumes(tmp_path):
    wrapped = qat(_cnn())
    wrapped.compile(keras.optimizers.Adam(1e-3), LOSS)
    wrapped.fit(X, Y, epochs=1, batch_size=16, verbose=0)
    path = str(tmp_path / "qat.keras")
    wrapped.save(path)
    np.save(str(tmp_path / "x.npy"), X)
    result = _run(f"""
        import json, numpy as np
        import tfopt, keras
        model = keras.models.load_model({path!r})
        ranges = {{v.path: float(v.numpy()) for v in model.non_trainable_weights if v.path.endswith(("range_min", "range_max"))}}
        x = np.load({str(tmp_path / "x.npy")!r})
        out = model.predict(x, verbose=0).tolist()
        from tfopt.compress.qat import has_wrappers, strip_qat
        plain = strip_qat(model)
        model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        loss = model.fit(x, np.zeros(len(x), "int64"), epochs=1, verbose=0).history["loss"][-1]
        print("RESULT " + json.dumps({{"ranges": ranges, "out": out, "wrapped": has_wrappers(model),
                                      "plain_wrapped": has_wrappers(plain), "loss": loss}}))
    """)
    assert result["wrapped"] and not result["plain_wrapped"] and np.isfinite(result["loss"])
    assert result["ranges"] == _ranges(wrapped)  # resumes from the saved ranges
    np.testing.assert_allclose(np.array(result["out"]), wrapped.predict(X, verbose=0), atol=1e-5)


_MIRRORED = """
    import json, numpy as np, tensorflow as tf
    tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                               [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from sklearn.datasets import load_digits
    from tfopt.compress.qat import qat
    from tfopt.export.convert import convert
    from tfopt.measure.parity import compare
    d = load_digits(); x = (d.images / 16.0).astype("float32")[..., None]; y = d.target
    keras.utils.set_random_seed(0)
    def build():
        inputs = keras.Input((8, 8, 1))
        h = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
        h = keras.layers.BatchNormalization()(h)
        h = keras.layers.ReLU()(h)
        h = keras.layers.Flatten()(keras.layers.MaxPooling2D()(h))
        return keras.Model(inputs, keras.layers.Dense(10)(h))
    model = build()
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:1400], y[:1400], epochs=3, batch_size=32, verbose=0)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]) if MIRRORED else tf.distribute.get_strategy()
    with strategy.scope():
        wrapped = qat(model)
        wrapped.compile(keras.optimizers.Adam(1e-4), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    wrapped.fit(x[:1400], y[:1400], epochs=1, batch_size=32, verbose=0)
    tflite = convert(wrapped, mode="int8", calibration=x[:200], check_delegation=False)
    parity = compare(wrapped, tflite, (x[1400:], y[1400:]), localize=False).to_dict()
    print("RESULT " + json.dumps({"replicas": strategy.num_replicas_in_sync, "float_ops": len(tflite.inspection.float_compute_ops),
                                  "precision": tflite.inspection.precision_counts, "parity": parity["top1_agreement"],
                                  "accuracy": parity["candidate_accuracy"]}))
"""


@pytest.mark.slow
def test_qat_under_mirrored_strategy_gives_the_same_int8_result():
    mirrored = _run("MIRRORED = True\n" + textwrap.dedent(_MIRRORED))
    single = _run("MIRRORED = False\n" + textwrap.dedent(_MIRRORED))
    assert mirrored["replicas"] == 2 and single["replicas"] == 1
    assert mirrored["float_ops"] == single["float_ops"] == 0
    assert mirrored["precision"] == single["precision"]
    assert mirrored["parity"] >= 0.99 and single["parity"] >= 0.99
    assert abs(mirrored["accuracy"] - single["accuracy"]) <= 0.02


def test_strip_of_a_trained_qat_model_is_plain_keras3():
    wrapped = qat(_cnn())
    wrapped.compile(keras.optimizers.Adam(1e-3), LOSS)
    wrapped.fit(X, Y, epochs=1, batch_size=16, verbose=0)
    plain = strip_qat(wrapped)
    assert isinstance(plain, keras.Model) and not has_wrappers(plain)
    assert [layer.name for layer in plain.layers] == ["image", "conv", "bn", "relu", "flatten", "logits"]


def _inverted_residual_net():
    """A MobileNetV2 block on 8x8 digits: Conv-BN-ReLU6, expand, depthwise, project, residual Add."""
    keras.utils.set_random_seed(0)
    layers = keras.layers
    inputs = keras.Input((8, 8, 1))
    x = layers.ReLU(6.0)(layers.BatchNormalization()(layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)))
    shortcut = x
    x = layers.ReLU(6.0)(layers.BatchNormalization()(layers.Conv2D(48, 1, use_bias=False)(x)))
    x = layers.ReLU(6.0)(layers.BatchNormalization()(layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)))
    x = layers.BatchNormalization()(layers.Conv2D(16, 1, use_bias=False)(x))
    x = layers.GlobalAveragePooling2D()(layers.Add()([shortcut, x]))
    return keras.Model(inputs, layers.Dense(10)(x), name="inverted_residual")


def test_qat_inverted_residual_block_matches_its_int8_tflite_on_digits():
    from sklearn.datasets import load_digits

    from tfopt.compress.batchnorm import reestimate_batchnorm
    from tfopt.export.convert import convert
    from tfopt.measure.parity import compare

    digits = load_digits()
    x, y = (digits.images / 16.0).astype("float32")[..., None], digits.target
    model = _inverted_residual_net()
    model.compile(keras.optimizers.Adam(3e-3), LOSS)
    model.fit(x[:1400], y[:1400], epochs=3, batch_size=32, verbose=0)
    model = reestimate_batchnorm(model, x[:256], batch_size=32)  # a trained model, not near chance
    wrapped = qat(model)
    wrapped.compile(keras.optimizers.Adam(1e-4), LOSS)
    wrapped.fit(x[:320], y[:320], epochs=1, batch_size=32, verbose=0)
    tflite = convert(wrapped, mode="int8", check_delegation=False)  # ranges from the fake-quant ops only
    assert not tflite.inspection.float_compute_ops
    parity = compare(wrapped, tflite, (x[1400:1600], y[1400:1600]), localize=False)
    logits = wrapped.predict(x[1400:1600], verbose=0)
    assert parity.top1_agreement >= 0.95, parity.summary()
    assert parity.reference_accuracy >= 0.6  # the comparison means something only on a model that learned
    assert parity.mean_abs_error <= 0.05 * float(np.std(logits)), parity.summary()


def test_qat_add_followed_by_relu_rounds_once_like_the_fused_tflite_op():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    y = keras.layers.Conv2D(4, 3, padding="same", name="branch")(x)
    added = keras.layers.Add(name="add")([x, y])
    out = keras.layers.GlobalAveragePooling2D(name="gap")(keras.layers.ReLU(name="relu")(added))
    shared = keras.layers.Add(name="shared_add")([out, out])  # two consumers: its own range
    model = keras.Model(inputs, [keras.layers.ReLU(name="relu_2")(shared), keras.layers.Dense(2, name="fc")(shared)])
    names = {layer.name for layer in qat(model).layers}
    assert "add_quant" not in names and "relu_quant" in names  # ADD+RELU is one LiteRT op: one range, the ReLU's
    assert "shared_add_quant" in names


def test_qat_average_pooling_keeps_its_input_range():
    # LiteRT's int8 AVERAGE_POOL_2D must keep its input's scale; a range of its own made DenseNet121's
    # transition blocks fail to convert ("violate the same scale constraint").
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 1, use_bias=False, name="conv")(inputs)
    x = keras.layers.AveragePooling2D(2, name="pool")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="fc")(keras.layers.Flatten(name="flatten")(x)))
    names = {layer.name for layer in qat(model).layers}
    assert "pool_quant" not in names and "conv" in names
