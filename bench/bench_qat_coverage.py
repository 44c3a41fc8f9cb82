"""QAT coverage: which architectures go QAT -> full-int8 .tflite that runs, and what stays float.

Builds the 13 keras.applications of issue 4 offline (`weights=None`, small
inputs, Keras 3; RegNetX002 comes from tf_keras, which Keras 3 no longer ships),
plus a Conv1D sequence classifier, a Conv(relu)->BatchNorm CNN and a subclassed
model. For each: `tfopt.quantize` (no training: coverage, not accuracy), convert
with `tfopt.convert(mode="int8")`, run 2 examples on LiteRT, and list the compute
ops left in float and the layers kept float during QAT with their reasons.
Plain tfmot (`quantize_model` on the tf_keras rebuild) is tried too, for the
baseline. Each model runs in its own child process (memory, crashes).

    python bench/bench_qat_coverage.py [--only MobileNetV2,Conv1D] [--skip_baseline]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

APPLICATIONS = {
    "MobileNet": 96, "MobileNetV2": 96, "MobileNetV3Small": 96, "MobileNetV3Large": 96, "EfficientNetB0": 64,
    "EfficientNetV2B0": 64, "ResNet50": 64, "DenseNet121": 64, "NASNetMobile": 96, "InceptionV3": 96,
    "Xception": 96, "ConvNeXtTiny": 64, "RegNetX002": 64,
}
EXTRA = ("Conv1D", "ConvReluBN", "Subclassed")


def build(name: str):
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    if name == "RegNetX002":
        import tf_keras

        return tf_keras.applications.regnet.RegNetX002(weights=None, input_shape=(64, 64, 3), classes=10, classifier_activation=None), (64, 64, 3)
    if name in APPLICATIONS:
        size = APPLICATIONS[name]
        fn = getattr(keras.applications, name)
        kwargs = dict(weights=None, input_shape=(size, size, 3), classes=10)
        try:
            return fn(**kwargs, classifier_activation=None), (size, size, 3)
        except TypeError:
            return fn(**kwargs), (size, size, 3)
    if name == "Conv1D":
        x = inputs = keras.Input((64, 8))
        x = keras.layers.Conv1D(16, 5, activation="relu")(x)
        x = keras.layers.MaxPooling1D()(x)
        x = keras.layers.Conv1D(32, 3, activation="relu")(x)
        x = keras.layers.GlobalAveragePooling1D()(x)
        return keras.Model(inputs, keras.layers.Dense(5)(x), name="conv1d_classifier"), (64, 8)
    if name == "ConvReluBN":
        x = inputs = keras.Input((32, 32, 3))
        for filters in (16, 32):
            x = keras.layers.Conv2D(filters, 3, activation="relu")(x)
            x = keras.layers.BatchNormalization()(x)
            x = keras.layers.MaxPooling2D()(x)
        x = keras.layers.Flatten()(x)
        return keras.Model(inputs, keras.layers.Dense(10)(x), name="conv_relu_bn"), (32, 32, 3)
    if name == "Subclassed":

        class Net(keras.Model):
            def __init__(self):
                super().__init__(name="subclassed")
                self.conv1 = keras.layers.Conv2D(16, 3, activation="relu")
                self.pool = keras.layers.MaxPooling2D()
                self.conv2 = keras.layers.Conv2D(32, 3, activation="relu")
                self.gap = keras.layers.GlobalAveragePooling2D()
                self.head = keras.layers.Dense(10)

            def call(self, x):
                return self.head(self.gap(self.conv2(self.pool(self.conv1(x)))))

        net = Net()
        net(np.zeros((1, 32, 32, 3), "float32"))
        return net, (32, 32, 3)
    raise ValueError(name)


def run_one(name: str, baseline: bool) -> dict:
    import numpy as np

    from tfopt import _keras
    from tfopt.compress.qat import qat_summary, quantize
    from tfopt.export.convert import convert
    from tfopt.measure.parity import _TFLiteRunner

    record: dict = {"model": name}
    model, shape = build(name)
    rng = np.random.default_rng(0)
    x = rng.random((16, *shape), dtype=np.float32) * (255.0 if len(shape) == 3 else 1.0)
    if baseline:
        tfmot = _keras.import_tfmot()
        try:
            from tfopt._legacy.bridge import to_tf_keras

            tfmot.quantization.keras.quantize_model(to_tf_keras(model) if _keras.keras_flavor(model) == "keras3" else model)
            record["plain_tfmot"] = "ok"
        except Exception as err:  # noqa: BLE001 - recording the failure is the point
            record["plain_tfmot"] = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
    start = time.perf_counter()
    try:
        qat = quantize(model, input_shape=shape)
        summary = qat_summary(qat)
        record["quantized_layers"] = len(summary.quantized)
        record["kept_float"] = [f"{f.name} ({f.class_name}): {f.reason}" for f in summary.kept_float]
        record["rewrites"] = list(summary.rewrites)
        tflite = convert(qat, mode="int8", calibration=x)
        record["float_compute_ops"] = [f"{op.name}#{op.index}" for op in tflite.inspection.float_compute_ops]
        record["precision"] = tflite.inspection.precision_counts
        outputs = _TFLiteRunner(tflite).outputs([x[:2]])[0]
        record["runs"] = bool(np.all(np.isfinite(outputs)))
        record["ok"] = record["runs"] and not record["float_compute_ops"]
    except Exception as err:  # noqa: BLE001
        record["ok"] = False
        record["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
    record["seconds"] = round(time.perf_counter() - start, 1)
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="comma-separated model names")
    parser.add_argument("--skip_baseline", action="store_true")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "bench_qat_coverage.json"))
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_one(args.child, not args.skip_baseline)), flush=True)
        return 0
    names = args.only.split(",") if args.only else list(APPLICATIONS) + list(EXTRA)
    rows = []
    for name in names:
        command = [sys.executable, os.path.abspath(__file__), "--child", name] + (["--skip_baseline"] if args.skip_baseline else [])
        proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT})
        lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        row = json.loads(lines[-1][7:]) if lines else {"model": name, "ok": False, "error": f"child exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"}
        rows.append(row)
        status = "OK  " if row["ok"] else "FAIL"
        print(f"{status} {name:<18} tfmot: {row.get('plain_tfmot', '-')[:40]:<40} float-in-QAT: {len(row.get('kept_float', [])):>3}  "
              f"float ops in .tflite: {len(row.get('float_compute_ops', []))}  {row.get('seconds', 0)} s  {row.get('error', '')}", flush=True)
    passed = sum(r["ok"] for r in rows)
    baseline = sum(r.get("plain_tfmot") == "ok" for r in rows)
    print(f"\nQAT -> full-int8 .tflite that runs: {passed}/{len(rows)} (plain tfmot quantize_model: {baseline}/{len(rows)})")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as handle:
        json.dump({"passed": passed, "total": len(rows), "plain_tfmot": baseline, "rows": rows}, handle, indent=1)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
