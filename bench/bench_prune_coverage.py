"""Coverage of unstructured pruning: 13 keras.applications and a subclassed model, wrap -> train -> strip -> convert.

For each architecture (weights=None, small inputs), in a child process:
plain tfmot on the tf_keras build (does `prune_low_magnitude(model)` wrap it?),
then tfopt: `prune(model, target_sparsity=0.8)` on the Keras 3 model (native
`PruneWrapper`, no tfmot), a few training steps with a plain `fit` and a
`keras.optimizers.Adam` object, `strip_pruning`, float32 conversion, and checks
that every kernel reported as pruned reaches the target in the stripped model
and in the .tflite, that the .tflite agrees with the stripped Keras model on
top-1 (LiteRT, `tfopt.measure.evaluate`), that every weight layer is either
pruned or listed as skipped, and that the caller's model is unchanged. Keras 3.15 has no RegNet, so RegNetX002
comes from tf_keras.applications (a tf_keras model in, tf_keras out).

    python bench/bench_prune_coverage.py [--json bench/results/bench_prune_coverage.json] [--models A,B]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
from _provenance import stamp  # noqa: E402  (bench/_provenance.py: commit, date, host, command)

APPS = [
    "MobileNet", "MobileNetV2", "MobileNetV3Small", "MobileNetV3Large", "EfficientNetB0", "EfficientNetV2B0",
    "ResNet50", "DenseNet121", "NASNetMobile", "InceptionV3", "Xception", "ConvNeXtTiny", "RegNetX002",
]
SUBCLASSED = "Subclassed"
SIZES = {"InceptionV3": 75, "Xception": 71}
TARGET = 0.8
STEPS = 3


def build(name: str, flavor: str):
    """A model with weights=None: keras.applications (Keras 3), or tf_keras.applications."""
    import keras
    import tf_keras

    size = SIZES.get(name, 32)
    if name == SUBCLASSED:
        return build_subclassed(keras), size
    module = keras if flavor == "keras3" else tf_keras
    return getattr(module.applications, name)(weights=None, input_shape=(size, size, 3), classes=10), size


def build_subclassed(keras):
    class ResidualNet(keras.Model):
        def __init__(self):
            super().__init__(name="residual_net")
            self.stem = keras.layers.Conv2D(16, 3, strides=2, padding="same")
            self.bn = keras.layers.BatchNormalization()
            self.conv_a = keras.layers.Conv2D(16, 3, padding="same", activation="relu")
            self.conv_b = keras.layers.Conv2D(16, 3, padding="same")
            self.pool = keras.layers.GlobalAveragePooling2D()
            self.hidden = keras.layers.Dense(32, activation="relu")
            self.head = keras.layers.Dense(10)

        def call(self, x):
            x = keras.activations.relu(self.bn(self.stem(x)))
            x = keras.activations.relu(x + self.conv_b(self.conv_a(x)))
            return self.head(self.hidden(self.pool(x)))

    model = ResidualNet()
    model(keras.ops.zeros((1, 32, 32, 3)))
    return model


def tfmot_baseline(name: str) -> dict:
    """Does plain tfmot wrap the tf_keras build of this architecture?"""
    from tfopt import _keras

    if name == SUBCLASSED:
        return {"ok": False, "error": "subclassed models are not supported by prune_low_magnitude"}
    tfmot = _keras.import_tfmot()
    model, _ = build(name, "tf_keras")
    try:
        tfmot.sparsity.keras.prune_low_magnitude(model)
        return {"ok": True, "error": None}
    except Exception as err:  # noqa: BLE001 - the bench records why tfmot stops
        return {"ok": False, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"}


def run_one(name: str) -> dict:
    import numpy as np

    from tfopt import _keras
    from tfopt.compress import schedules
    from tfopt.compress.prune import prune, pruning_summary, strip_pruning as strip
    from tfopt.measure.evaluate import evaluate
    from tfopt.export.convert import convert
    from tfopt.analyze.sparsity import tflite_sparsity

    row: dict = {"model": name, "stage": "build"}
    start = time.time()
    row["tfmot"] = tfmot_baseline(name)
    flavor = "tf_keras" if name == "RegNetX002" else "keras3"
    _keras.keras_module(flavor).utils.set_random_seed(0)
    model, size = build(name, flavor)
    row.update(input_size=size, flavor_in=flavor, params=int(model.count_params()))
    before = [w.copy() for w in model.get_weights()]
    rng = np.random.default_rng(0)
    x = rng.random((2 * STEPS, size, size, 3), dtype=np.float32)
    y = rng.integers(0, 10, 2 * STEPS)
    try:
        row["stage"] = "wrap"
        pruned = prune(model, target_sparsity=TARGET, end_step=STEPS - 1)
        row["stage"] = "train"
        k = _keras.keras_module(flavor)
        pruned.compile(k.optimizers.Adam(1e-3), k.losses.SparseCategoricalCrossentropy())
        pruned.fit(x, y, batch_size=2, epochs=1, verbose=0)
        summary = pruning_summary(pruned)
        row["stage"] = "strip"
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an unfinished schedule would warn: make it fail the row
            stripped = strip(pruned)
        row["flavor_out"] = _keras.keras_flavor(stripped)
        kernels = {l.name: stripped.get_layer(l.name).get_weights() for l in summary.layers}
        sparsities = {n: max(schedules.sparsity_of(w) for w in ws if w.ndim >= 2) for n, ws in kernels.items()}
        row["stage"] = "convert"
        tflite = convert(stripped, mode="float32", check_delegation=False).tflite
        report = tflite_sparsity(tflite)
        row["stage"] = "parity"
        x_check = rng.random((32, size, size, 3), dtype=np.float32)
        keras_top1 = np.argmax(stripped.predict(x_check, verbose=0), -1)
        row["tflite_top1_agreement"] = evaluate(tflite, (x_check, keras_top1)).value
        row["stage"] = "done"
        weight_layers = [l for l in pruned.layers if l.weights]
        classes = collections.Counter(l.class_name for l in summary.layers)
        row.update(
            wrapper=type(next(l for l in pruned.layers if hasattr(l, "pruning_step"))).__name__,
            pruned_layers=len(summary.layers),
            pruned_classes=dict(classes),
            pruned_weight_fraction=sum(l.num_weights for l in summary.layers) / max(model.count_params(), 1),
            min_kernel_sparsity=min(sparsities.values()),
            tflite_tensors_at_target=sum(t.sparsity >= TARGET - 0.01 for t in report.tensors),
            skipped=len(summary.skipped),
            skipped_by_reason=dict(collections.Counter(f"{s.class_name}: {s.reason}" for s in summary.skipped)),
            all_weight_layers_accounted=len(summary.layers) + len(summary.skipped) == len(weight_layers),
            depthwise_pruned=classes.get("DepthwiseConv2D", 0),
            caller_unchanged=all(np.array_equal(a, b) for a, b in zip(before, model.get_weights())),
            same_outputs_after_strip=float(np.max(np.abs(pruned.predict(x[:2], verbose=0) - stripped.predict(x[:2], verbose=0)))),
        )
        row["ok"] = bool(
            row["min_kernel_sparsity"] >= TARGET - 0.01
            and row["tflite_tensors_at_target"] >= row["pruned_layers"]
            and row["all_weight_layers_accounted"]
            and row["tflite_top1_agreement"] >= 0.97
            and row["caller_unchanged"]
        )
    except Exception as err:  # noqa: BLE001 - the bench records where and why a model fails
        row["ok"] = False
        row["error"] = f"{type(err).__name__}: {' | '.join(str(err).splitlines()[:2])[:300]}"
    row["seconds"] = round(time.time() - start, 1)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "bench_prune_coverage.json"))
    parser.add_argument("--models", default=",".join(APPS + [SUBCLASSED]))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        with open(args.out, "w") as handle:
            json.dump(run_one(args.child), handle)
        return 0
    rows = []
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "row.json")
            proc = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--child", name, "--out", out],
                capture_output=True, text=True, timeout=1800,
            )
            if os.path.exists(out):
                row = json.load(open(out))
            else:
                row = {"model": name, "ok": False, "error": f"child exited {proc.returncode}: {proc.stderr[-300:]}"}
        rows.append(row)
        print(f"{name:<18} tfmot={'ok' if row.get('tfmot', {}).get('ok') else 'FAIL':<4} tfopt={'ok' if row['ok'] else 'FAIL':<4} "
              f"pruned={row.get('pruned_layers', '-')} minsp={row.get('min_kernel_sparsity', float('nan')):.3f} "
              f"{row.get('seconds', '-')}s {row.get('error', '')}", flush=True)
    print()
    print(f"{'model':<18} {'in->out':<17} {'tfmot':<5} {'tfopt':<5} {'pruned':>6} {'w.frac':>6} {'min sp':>6} {'tflite':>6} {'skipped':>7}  skipped classes")
    for r in rows:
        skipped = collections.Counter(k.split(":")[0] for k in r.get("skipped_by_reason", {}) for _ in range(r["skipped_by_reason"][k]))
        print(f"{r['model']:<18} {r.get('flavor_in', '-') + '->' + r.get('flavor_out', '-'):<17} "
              f"{'ok' if r.get('tfmot', {}).get('ok') else 'FAIL':<5} {'ok' if r['ok'] else 'FAIL':<5} "
              f"{r.get('pruned_layers', 0):>6} {r.get('pruned_weight_fraction', 0):>6.2f} {r.get('min_kernel_sparsity', 0):>6.3f} "
              f"{r.get('tflite_tensors_at_target', 0):>6} {r.get('skipped', 0):>7}  {dict(skipped)}")
    apps = [r for r in rows if r["model"] in APPS]
    done = {
        "tfopt_apps_passed": sum(r["ok"] for r in apps),
        "tfmot_apps_wrapped": sum(bool(r.get("tfmot", {}).get("ok")) for r in apps),
        "apps_total": len(apps),
        "subclassed_passed": all(r["ok"] for r in rows if r["model"] == SUBCLASSED),
        "all_passed": all(r["ok"] for r in rows),
    }
    print("done when:", done)
    from tfopt._io import write_json

    write_json(args.json, {"provenance": stamp(script=__file__), "rows": rows, "done_when": done,
                           "target_sparsity": TARGET, "train_steps": STEPS})
    print(f"wrote {args.json}")
    return 0 if done["all_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
