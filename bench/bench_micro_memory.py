"""Flash and tensor arena on TFLite Micro: plain int8 with TFLite Micro's own plan, against tfopt's export.

Models built to the MLPerf Tiny architectures at a small size, trained here on
real offline images (Fashion-MNIST from the Debian package; no audio dataset is
installed, so the keyword spotter reads Fashion-MNIST images resized to 49x10, a
stand-in for its 49x10 MFCC input), plus a residual Keras 3 CNN with two branches:

- `ds_cnn`: the keyword-spotting DS-CNN (a 10x4 stride-2 conv, 4 depthwise-separable blocks of 64, 12 classes
  in the reference; 10 here);
- `resnet8`: the image-classification ResNet-8 (16/32/64 filters, 1x1 shortcut convs), 28x28x1;
- `fc_autoencoder`: the anomaly-detection autoencoder (640 -> 4 x 128 -> 8 -> 4 x 128 -> 640), fed Fashion-MNIST
  images resized to 32x20 (640 values); its figure is the reconstruction error, not an accuracy;
- `mobilenet_v1`: the visual-wake-words MobileNetV1 (alpha 0.25), fed Fashion-MNIST images resized to 96x96x1;
- `residual_cnn`: two parallel conv branches added to their input (inception-like), 28x28x1.

For each model, three .tflite files and what TFLite Micro measures on them:
1. plain int8: flash and arena with TFLite Micro's own memory plan;
2. the same int8 model with tfopt's memory plan (`export_micro(..., compress=False)`): arena, the plan's head, the
   lower bound of its operator order; outputs bit-identical to 1. on TFLite Micro (checked by export_micro);
3. the model clustered to 16 values per layer (`tfopt.cluster`, one fine-tuning epoch), int8, exported with
   compression and tfopt's plan: flash, arena, accuracy.
Plus the int4-weight kernel probe (`int4_kernel_support`) on the DS-CNN (conv, depthwise, dense) and the autoencoder.

    .venv/bin/python bench/bench_micro_memory.py [--train 5000] [--train_mobilenet 1500] [--epochs 3] [--num_samples 50]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _provenance import stamp  # noqa: E402  (bench/_provenance.py: commit, date, host, command)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def _bn():
    """BatchNormalization whose moving statistics settle within a few hundred steps (the default 0.99 leaves
    them far from the batch statistics after 3 epochs of 5,000 images, and test accuracy at chance)."""
    import keras

    return keras.layers.BatchNormalization(momentum=0.9)


def ds_cnn(input_shape=(49, 10, 1), classes=10, filters=64, blocks=4):
    """MLPerf Tiny keyword spotting DS-CNN."""
    import keras

    layers = keras.layers
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(filters, (10, 4), strides=2, padding="same", use_bias=False)(inputs)
    x = layers.ReLU()(_bn()(x))
    for _ in range(blocks):
        x = layers.ReLU()(_bn()(layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)))
        x = layers.ReLU()(_bn()(layers.Conv2D(filters, 1, use_bias=False)(x)))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(classes)(x), name="ds_cnn")


def resnet8(input_shape=(28, 28, 1), classes=10):
    """MLPerf Tiny image classification ResNet-8."""
    import keras

    layers = keras.layers
    inputs = keras.Input(input_shape)
    x = layers.ReLU()(_bn()(layers.Conv2D(16, 3, padding="same")(inputs)))
    for filters, stride in ((16, 1), (32, 2), (64, 2)):
        y = layers.ReLU()(_bn()(layers.Conv2D(filters, 3, strides=stride, padding="same")(x)))
        y = _bn()(layers.Conv2D(filters, 3, padding="same")(y))
        if stride != 1:
            x = layers.Conv2D(filters, 1, strides=stride)(x)
        x = layers.ReLU()(layers.Add()([x, y]))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(classes)(x), name="resnet8")


def fc_autoencoder(dim=640, width=128, code=8):
    """MLPerf Tiny anomaly detection autoencoder."""
    import keras

    layers = keras.layers
    inputs = keras.Input((dim,))
    x = inputs
    for units in (width,) * 4 + (code,) + (width,) * 4:
        x = layers.ReLU()(_bn()(layers.Dense(units)(x)))
    return keras.Model(inputs, layers.Dense(dim)(x), name="fc_autoencoder")


def mobilenet_v1(input_shape=(96, 96, 1), classes=10, alpha=0.25):
    """MLPerf Tiny visual wake words MobileNetV1 (alpha 0.25, 96x96; 2 classes in the reference, 10 here)."""
    import keras

    layers = keras.layers
    inputs = keras.Input(input_shape)
    x = layers.ReLU(6.0)(_bn()(layers.Conv2D(int(32 * alpha), 3, strides=2, padding="same", use_bias=False)(inputs)))
    blocks = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
    for filters, stride in blocks:
        x = layers.ReLU(6.0)(_bn()(layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(x)))
        x = layers.ReLU(6.0)(_bn()(layers.Conv2D(int(filters * alpha), 1, use_bias=False)(x)))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(classes)(x), name="mobilenet_v1")


def residual_cnn(input_shape=(28, 28, 1), classes=10):
    """A Keras 3 CNN with two parallel branches added to their input."""
    import keras

    layers = keras.layers
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    a = layers.Conv2D(16, 1)(layers.Conv2D(32, 3, padding="same", activation="relu")(x))
    b = layers.Conv2D(16, 1)(layers.Conv2D(32, 5, padding="same", activation="relu")(x))
    x = layers.ReLU()(layers.Add()([x, a, b]))
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(layers.MaxPooling2D()(x))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(classes)(x), name="residual_cnn")


def _resize(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    import tensorflow as tf

    return tf.image.resize(x, shape).numpy().astype("float32")


def _litert_outputs(tflite: bytes, x: np.ndarray) -> np.ndarray:
    """Dequantized outputs of an int8-I/O model on LiteRT (for the autoencoder's reconstruction error)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    s_in, z_in = inp["quantization"]
    s_out, z_out = out["quantization"]
    rows = []
    for row in x:
        q = np.clip(np.round(row[None] / s_in + z_in), -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], q)
        interpreter.invoke()
        rows.append((interpreter.get_tensor(out["index"]).astype(np.float32) - z_out) * s_out)
    return np.concatenate(rows)


def run_model(name, build, data, *, epochs, num_samples, autoencoder=False):
    import keras

    import tfopt
    from tfopt.export.micro import export_micro

    keras.utils.set_random_seed(0)
    model = build()
    x_train, x_test = data["x_train"], data["x_test"]
    y_train, y_test = (x_train, x_test) if autoencoder else (data["y_train"], data["y_test"])
    loss = "mse" if autoencoder else keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(1e-3), loss)
    t0 = time.perf_counter()
    model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)
    clustered = tfopt.cluster(model, num_clusters=16)
    clustered.compile(keras.optimizers.Adam(1e-4), loss)
    clustered.fit(x_train, y_train, epochs=1, batch_size=64, verbose=0)
    clustered = tfopt.strip(clustered)
    train_seconds = time.perf_counter() - t0
    convert = dict(mode="int8", calibration=x_train[:300], input_type="int8", output_type="int8")
    plain = tfopt.convert(model, **convert).tflite
    small = tfopt.convert(clustered, **convert).tflite

    def score(tflite, keras_model=None):
        if autoencoder:
            out = _litert_outputs(tflite, x_test) if keras_model is None else keras_model.predict(x_test, verbose=0)
            return {"reconstruction_mse": float(np.mean((out - x_test) ** 2))}
        if keras_model is not None:
            logits = keras_model.predict(x_test, verbose=0)
            return {"accuracy": float(np.mean(np.argmax(logits, 1) == y_test))}
        return {"accuracy": tfopt.benchmark(tflite, data=(x_test, y_test), num_runs=2).accuracy}

    folder = tempfile.mkdtemp(prefix=f"tfopt-{name}-")
    t0 = time.perf_counter()
    planned = export_micro(plain, os.path.join(folder, "plain"), name=name, data=x_test, num_samples=num_samples,
                           compress=False)
    compressed = export_micro(small, os.path.join(folder, "small"), name=name, data=x_test, num_samples=num_samples)
    check_seconds = time.perf_counter() - t0
    print(planned.summary(), "\n", compressed.summary(), sep="")
    return {
        "model": name,
        "float": score(None, model),
        "int8": {"flash_bytes": len(plain), "arena_bytes_tflm_plan": planned.plain_arena_bytes, **score(plain)},
        "int8_tfopt_plan": {
            "flash_bytes": planned.flash_bytes,
            "arena_bytes": planned.arena_bytes,
            "plan": planned.plan,
            "outputs_bit_identical": bool(planned.plan and planned.plan["mismatched_samples"] == 0),
        },
        "clustered16_compressed": {
            "flash_bytes": compressed.flash_bytes,
            "int8_flash_bytes": compressed.plain_flash_bytes,
            "arena_bytes": compressed.arena_bytes,
            "arena_bytes_tflm_plan_uncompressed": compressed.plain_arena_bytes,
            "compressed_tensors": list(compressed.compressed_tensors),
            "plan": compressed.plan,
            "notes": list(compressed.notes),
            **score(small),
        },
        "train_seconds": train_seconds,
        "check_seconds": check_seconds,
    }


def table(rows) -> str:
    """The docs table: flash and arena per model, TFLite Micro's plan against tfopt's."""
    lines = [
        "| model | int8 flash | clustered + LUT flash | int8 arena, TFLM plan | int8 arena, tfopt plan | "
        "arena head: TFLM / tfopt (lower bound) | clustered + LUT arena | int8 acc / mse | clustered acc / mse |",
        "|" + "---|" * 9,
    ]
    for r in rows:
        metric = "accuracy" if "accuracy" in r["int8"] else "reconstruction_mse"
        fmt = (lambda v: f"{100 * v:.1f}%") if metric == "accuracy" else (lambda v: f"{v:.4f}")
        plan = r["int8_tfopt_plan"]["plan"] or {}
        c = r["clustered16_compressed"]
        tflm, mine = r["int8"]["arena_bytes_tflm_plan"], r["int8_tfopt_plan"]["arena_bytes"]
        lines.append(
            f"| {r['model']} | {r['int8']['flash_bytes']:,} | "
            f"{c['flash_bytes']:,} ({c['flash_bytes'] / r['int8']['flash_bytes']:.2f}x) | {tflm:,} | "
            f"{mine:,} ({100 * (mine - tflm) / tflm:+.1f}%) | "
            f"{plan.get('tflm_head_bytes') or 0:,} / {plan.get('head_bytes_measured') or 0:,} "
            f"({plan.get('lower_bound_bytes', 0):,}) | {c['arena_bytes']:,} | "
            f"{fmt(r['int8'][metric])} | {fmt(c[metric])} |"
        )
    return "\n".join(lines)


def main() -> int:
    import tfopt
    from tfopt.export.micro import int4_kernel_support

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=5000, help="Fashion-MNIST training images used")
    parser.add_argument("--train_mobilenet", type=int, default=1500, help="training images for the 96x96 MobileNet")
    parser.add_argument("--test", type=int, default=1000, help="Fashion-MNIST test images scored")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--num_samples", type=int, default=50, help="inputs compared bit for bit on TFLite Micro")
    parser.add_argument("--models", default="ds_cnn,resnet8,fc_autoencoder,mobilenet_v1,residual_cnn")
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results",
                                                         "bench_micro_memory.json"))
    args = parser.parse_args()
    start = time.perf_counter()
    fashion = tfopt.load_dataset("fashion_mnist")
    x_train, y_train = fashion.x_train[: args.train], fashion.y_train[: args.train]
    x_test, y_test = fashion.x_test[: args.test], fashion.y_test[: args.test]
    images = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    spectro = {"x_train": _resize(x_train, (49, 10)), "y_train": y_train,
               "x_test": _resize(x_test, (49, 10)), "y_test": y_test}
    flat = {"x_train": _resize(x_train, (32, 20)).reshape(len(x_train), -1), "y_train": y_train,
            "x_test": _resize(x_test, (32, 20)).reshape(len(x_test), -1), "y_test": y_test}
    n = min(args.train_mobilenet, len(x_train))  # 96x96 trains ~12x slower than 28x28: fewer images keep the run short
    big = {"x_train": _resize(x_train[:n], (96, 96)), "y_train": y_train[:n],
           "x_test": _resize(x_test, (96, 96)), "y_test": y_test}
    specs = {
        "ds_cnn": (ds_cnn, spectro, False),
        "resnet8": (resnet8, images, False),
        "fc_autoencoder": (fc_autoencoder, flat, True),
        "mobilenet_v1": (mobilenet_v1, big, False),
        "residual_cnn": (residual_cnn, images, False),
    }
    rows = []
    for name in args.models.split(","):
        build, data, autoencoder = specs[name]
        rows.append(run_model(name, build, data, epochs=args.epochs, num_samples=args.num_samples,
                              autoencoder=autoencoder))
        print(f"{name}: done at {time.perf_counter() - start:.0f} s", flush=True)
    int4 = []
    for name in ("ds_cnn", "fc_autoencoder"):
        build = specs[name][0]
        data = specs[name][1]
        import keras

        keras.utils.set_random_seed(0)
        model = build()
        for per_channel_dense in (True, False):
            tflite = tfopt.convert(model, mode="int8", calibration=data["x_train"][:100], input_type="int8",
                                   output_type="int8", per_channel_dense=per_channel_dense).tflite
            for row in int4_kernel_support(tflite, data=data["x_test"], num_samples=10):
                int4.append({"model": name, "per_channel_dense": per_channel_dense, **row})
    support = {}
    for row in int4:
        key = row["op"] + ("" if row["op"] != "FULLY_CONNECTED" else
                           (" (per-channel)" if row["per_channel_dense"] else " (per-tensor)"))
        support.setdefault(key, set()).add((row["accepted"], row["reason"].split(" was not true")[0][-120:]))
    text = table(rows)
    print("\n" + text)
    print("\nint4 weights on TFLite Micro:")
    for key, found in sorted(support.items()):
        print(f"  {key}: {sorted(found)}")
    payload = {
        "rows": rows,
        "int4_kernel_support": int4,
        "table_markdown": text,
        "data": f"Fashion-MNIST (Debian dataset-fashion-mnist), first {args.train} train / {args.test} test images "
                f"({args.train_mobilenet} train for the 96x96 MobileNet)",
        "seconds": time.perf_counter() - start,
        "provenance": stamp(script=__file__),
    }
    from tfopt._io import write_json

    write_json(args.output, payload)
    print(f"wrote {args.output} in {payload['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
