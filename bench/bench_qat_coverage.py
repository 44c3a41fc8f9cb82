"""QAT coverage on the Keras 3 path: wrap, fine-tune on real data, convert to int8, Keras-vs-.tflite parity.

For 13 keras.applications (`weights=None`, small inputs, 10-class logits head)
plus a Conv1D classifier, a subclassed model and a nested model, on real data
(sklearn's 8x8 digits, upsampled to the model's input and repeated to 3
channels, in [0, 1], or in [0, 255] for the applications that rescale inside
the model; the Conv1D model reads each digit as 8 steps of 8 values):

1. the float model trains on 1,000 of the 1,200 training digits, one epoch at
   a time, until it classifies `--target_accuracy` of the other 200, has
   trained `--max_pretrain_epochs` epochs or has finished an epoch past
   `--max_pretrain_seconds` (so the epochs of the slowest models depend on the
   CPU; the row records them)
   (Adam 1e-3; 1e-4 for VGG16, which
   has no BatchNorm and does not learn from scratch at 1e-3), and its
   BatchNorm statistics are re-estimated. This stands in for a pretrained
   model: a near-chance model has almost tied logits, and its top-1 flips
   under noise far below one input LSB, so no int8 model can agree with it.
   The row records the epochs and the float accuracy on the test digits;
2. `tfopt.qat` wraps it; it fine-tunes `--steps` steps with `fit` and a
   `keras.optimizers.Adam` object;
3. `tfopt.convert(mode="int8")` with 64 calibration examples;
4. Keras-vs-.tflite top-1 agreement on 200 held-out digits (with the output
   SNR and the mean absolute logit error, more informative than top-1 alone).

A row is "ok" only if all of that passed, the float model learned (test
accuracy >= `--min_float_accuracy`; chance is 0.1), the .tflite has no float
compute op, and the top-1 agreement is >= `--min_parity`. Each model runs in its own child
process (memory, crashes); `phase_seconds` says where its time went.

    python bench/bench_qat_coverage.py [--only MobileNetV2,Conv1D] [--steps 20] [--target_accuracy 0.9]
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
from _provenance import merged, stale_because, stamp  # noqa: E402  (bench/_provenance.py: commit, date, host, command)

APPLICATIONS = {
    "MobileNet": 32, "MobileNetV2": 32, "MobileNetV3Small": 32, "MobileNetV3Large": 32, "EfficientNetB0": 32,
    "EfficientNetV2B0": 32, "ResNet50": 32, "DenseNet121": 32, "NASNetMobile": 32, "InceptionV3": 75,
    "Xception": 71, "ConvNeXtTiny": 32, "VGG16": 32,
}
EXTRA = ("Conv1D", "Subclassed", "Nested")
# Applications that rescale inside the model and expect pixels in [0, 255] (Keras' documentation): fed [0, 1],
# their Rescaling output spans less than 1% of its int8 range (2 steps), and int8 loses the image.
PIXELS_0_255 = {"MobileNetV3Small", "MobileNetV3Large", "EfficientNetB0", "EfficientNetV2B0", "ConvNeXtTiny"}
PRETRAIN_LEARNING_RATE = {"VGG16": 1e-4}  # no BatchNorm: from scratch at 1e-3 it stays at chance


def build(name: str):
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    if name in APPLICATIONS:
        size = APPLICATIONS[name]
        fn = getattr(keras.applications, name)
        return fn(weights=None, input_shape=(size, size, 3), classes=10, classifier_activation=None), (size, size, 3)
    if name == "Conv1D":
        x = inputs = keras.Input((8, 8))
        x = keras.layers.Conv1D(32, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.Conv1D(32, 3, padding="causal", activation="relu")(x)
        x = keras.layers.SeparableConv1D(32, 3, padding="same", activation="relu")(x)
        x = keras.layers.GlobalAveragePooling1D()(x)
        return keras.Model(inputs, keras.layers.Dense(10)(x), name="conv1d_classifier"), (8, 8)
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
    if name == "Nested":
        inner_in = keras.Input((32, 32, 3))
        h = keras.layers.Rescaling(2.0, offset=-1.0)(inner_in)
        h = keras.layers.Conv2D(16, 3, strides=2, use_bias=False)(h)
        h = keras.layers.BatchNormalization()(h)
        h = keras.layers.ReLU(6.0)(h)
        backbone = keras.Model(inner_in, h, name="backbone")
        head = keras.Sequential([keras.Input((15, 15, 16)), keras.layers.Conv2D(32, 3, activation="relu"),
                                 keras.layers.GlobalAveragePooling2D()], name="head")
        inputs = keras.Input((32, 32, 3))
        x = head(backbone(inputs))
        return keras.Model(inputs, keras.layers.Dense(10)(x), name="nested"), (32, 32, 3)
    raise ValueError(name)


def digits_for(shape: tuple[int, ...]):
    """Real digits shaped for the model: (x_train, y_train, x_test, y_test)."""
    import numpy as np
    import tensorflow as tf
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype("float32")
    labels = digits.target.astype("int64")
    order = np.random.default_rng(0).permutation(len(images))
    images, labels = images[order], labels[order]
    if len(shape) == 2:
        x = images
    else:
        x = tf.image.resize(images[..., None], shape[:2]).numpy()
        x = np.repeat(x, shape[2], axis=-1)
    return x[:1200], labels[:1200], x[1200:1400], labels[1200:1400]


def run_one(name: str, steps: int, min_parity: float, target_accuracy: float, max_pretrain_epochs: int,
            max_pretrain_seconds: float, min_float_accuracy: float) -> dict:
    import keras
    import numpy as np

    from tfopt.compress.batchnorm import reestimate_batchnorm
    from tfopt.compress.qat import qat, qat_summary
    from tfopt.export.convert import convert
    from tfopt.measure.parity import compare

    record: dict = {"model": name, "ok": False}
    start = last = time.perf_counter()
    phases: dict = {}
    record["phase_seconds"] = phases

    def done(phase: str) -> None:
        nonlocal last
        now = time.perf_counter()
        phases[phase] = round(now - last, 1)
        last = now

    stage = "build"
    try:
        model, shape = build(name)
        x_train, y_train, x_test, y_test = digits_for(shape)
        if name in PIXELS_0_255:
            x_train, x_test = x_train * 255.0, x_test * 255.0
        record["input_range"] = [0, 255] if name in PIXELS_0_255 else [0, 1]
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        done("build")
        stage = "float pre-training"
        model.compile(keras.optimizers.Adam(PRETRAIN_LEARNING_RATE.get(name, 1e-3)), loss)
        x_fit, y_fit, x_stop, y_stop = x_train[:1000], y_train[:1000], x_train[1000:], y_train[1000:]
        for epoch in range(1, max_pretrain_epochs + 1):
            model.fit(x_fit, y_fit, batch_size=32, epochs=1, verbose=0)
            stop_accuracy = float(np.mean(np.argmax(model.predict(x_stop, batch_size=100, verbose=0), -1) == y_stop))
            if stop_accuracy >= target_accuracy or time.perf_counter() - last > max_pretrain_seconds:
                break
        record["pretrain_epochs"] = epoch
        done("pretrain")
        if any(type(layer).__name__ == "BatchNormalization" for layer in model.layers):
            model = reestimate_batchnorm(model, x_train[:256], batch_size=32)
            done("batchnorm")
        logits = model.predict(x_test, batch_size=100, verbose=0)
        record["float_accuracy"] = round(float(np.mean(np.argmax(logits, -1) == y_test)), 4)
        done("float_eval")
        stage = "qat"
        wrapped = qat(model, input_shape=shape)
        done("qat_wrap")
        summary = qat_summary(wrapped)
        modes = {getattr(layer, "batchnorm_statistics", None) for layer in wrapped.layers
                 if getattr(layer, "batchnorm", None) is not None}
        record["batchnorm_statistics"] = sorted(modes - {None}) or None  # BatchNorm in QAT training
        record["quantized_layers"] = len(summary.quantized)
        record["kept_float"] = [f"{f.name} ({f.class_name}): {f.reason}" for f in summary.kept_float]
        stage = "qat fine-tune"
        wrapped.compile(keras.optimizers.Adam(1e-4), loss)
        history = wrapped.fit(x_train[-16 * steps:], y_train[-16 * steps:], batch_size=16, epochs=1, verbose=0)
        record["qat_loss"] = round(float(history.history["loss"][-1]), 4)
        record["trained"] = bool(np.isfinite(record["qat_loss"]))
        done("qat_fit")
        stage = "convert"
        tflite = convert(wrapped, mode="int8", calibration=x_train[:64], check_delegation=False)
        record["float_compute_ops"] = [f"{op.name}#{op.index}" for op in tflite.inspection.float_compute_ops]
        record["precision"] = tflite.inspection.precision_counts
        done("convert")
        stage = "parity"
        parity = compare(wrapped, tflite, (x_test, y_test), localize=False)
        done("parity")
        record["parity_top1"] = round(float(parity.top1_agreement), 4)
        snr = float(parity.outputs[0].snr_db) if parity.outputs else float("nan")
        record["output_snr_db"] = round(snr, 1) if np.isfinite(snr) else None  # None: identical outputs
        record["mean_abs_logit_error"] = round(float(parity.mean_abs_error), 4)
        record["keras_accuracy"] = parity.to_dict().get("reference_accuracy")
        record["tflite_accuracy"] = parity.to_dict().get("candidate_accuracy")
        record["float_model_learned"] = record["float_accuracy"] >= min_float_accuracy
        record["ok"] = (record["trained"] and record["float_model_learned"] and not record["float_compute_ops"]
                        and record["parity_top1"] >= min_parity)
    except Exception as err:  # noqa: BLE001 - recording the failure is the point
        record["error"] = f"{stage}: {type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
    record["seconds"] = round(time.perf_counter() - start, 1)
    return record


def render(payload: dict) -> str:
    """The markdown coverage table (and the rows that stopped early) of a result file, for docs/qat.md."""
    def cell(row, key):
        value = row.get(key)
        return "-" if value is None else str(value)

    runs = payload.get("commands") or [payload.get("command", "python bench/bench_qat_coverage.py")]
    lines = [
        f"{payload['passed']} of {payload['planned']} ok ({' then '.join(f'`{c}`' for c in runs)}; "
        f"pre-training to {payload.get('target_accuracy')} of 200 held-out digits, then {payload['steps']} QAT steps "
        f"of batch 16; `min_parity` {payload['min_parity']}).",
        "",
        "| model | ok | top-1 agreement | output SNR (dB) | float epochs | float accuracy | Keras QAT accuracy "
        "| int8 .tflite accuracy | float ops in .tflite | layers kept float | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in payload["rows"]:
        float_ops = row.get("float_compute_ops")
        lines.append(
            f"| {row['model']} | {'yes' if row['ok'] else 'no'} | {cell(row, 'parity_top1')} | {cell(row, 'output_snr_db')} "
            f"| {cell(row, 'pretrain_epochs')} | {cell(row, 'float_accuracy')} | {cell(row, 'keras_accuracy')} "
            f"| {cell(row, 'tflite_accuracy')} | {'-' if float_ops is None else len(float_ops)} "
            f"| {len(row.get('kept_float') or [])} | {cell(row, 'seconds')} |")
    stopped = [row for row in payload["rows"] if row.get("error")]
    if stopped:
        lines += ["", "Rows that stopped early:", ""] + [f"- {row['model']}: {row['error']}" for row in stopped]
    return "\n".join(lines)


def update_docs(result: str, page: str) -> int:
    """Replaces the text between `<!-- coverage -->` and `<!-- /coverage -->` in `page` with the table of `result`."""
    later = stale_because(result)  # a page quotes only results of the code as it is
    if later:
        print(f"{result} is stale: {len(later)} commit(s) since changed what it measured (latest: {later[0]}); "
              "re-run the bench first")
        return 1
    with open(result) as handle:
        table = render(json.load(handle))
    with open(page) as handle:
        text = handle.read()
    start, end = "<!-- coverage -->", "<!-- /coverage -->"
    if start not in text or end not in text:
        print(f"{page} has no {start} ... {end} markers")
        return 1
    head, rest = text.split(start, 1)
    tmp = page + ".tmp"
    with open(tmp, "w") as handle:
        handle.write(head + start + "\n" + table + "\n" + end + rest.split(end, 1)[1])
    os.replace(tmp, page)
    print(f"updated {page} from {result}")
    return 0


def merge(paths: list[str], output: str) -> int:
    """Writes `output` from the rows of several partial runs (e.g. rows re-run after a fix), in bench order."""
    rows: dict[str, dict] = {}
    settings: dict = {}
    commands: list[str] = []  # every run behind the rows, in the order given (later runs win a model)
    parts = []
    for path in paths:
        with open(path) as handle:
            payload = json.load(handle)
        parts.append(payload)
        rows.update({row["model"]: row for row in payload["rows"]})
        commands += payload.get("commands") or [payload["command"]]
        settings = {k: v for k, v in payload.items()
                    if k not in ("passed", "total", "planned", "rows", "command", "commands", "merged_from", "provenance",
                                 "commit", "script")}
    order = list(EXTRA) + list(APPLICATIONS)
    done = [rows[name] for name in order if name in rows]
    payload = {"provenance": merged(parts, script=__file__, ran=False), "passed": sum(bool(r["ok"]) for r in done),
               "total": len(done), "planned": len(order), **settings, "commands": commands, "rows": done}
    with open(output, "w") as handle:
        json.dump(payload, handle, indent=1)
    print(f"{payload['passed']}/{payload['total']} ok ({payload['planned']} planned); wrote {output}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="comma-separated model names")
    parser.add_argument("--steps", type=int, default=10, help="float and QAT fine-tuning steps (batch 16)")
    parser.add_argument("--target_accuracy", type=float, default=0.9,
                        help="float pre-training stops once this share of 200 held-out training digits is right")
    parser.add_argument("--max_pretrain_epochs", type=int, default=30)
    parser.add_argument("--max_pretrain_seconds", type=float, default=900.0)
    parser.add_argument("--min_float_accuracy", type=float, default=0.5, help="below it the row fails: no model learned")
    parser.add_argument("--min_parity", type=float, default=0.95)
    parser.add_argument("--jobs", type=int, default=2, help="models run at once, each in its own process")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "bench_qat_coverage.json"))
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="combine the rows of earlier result files (later files win) into --output and exit")
    parser.add_argument("--update_docs", default=None, metavar="PAGE",
                        help="write the table of --output between the coverage markers of PAGE and exit")
    args = parser.parse_args()
    if args.merge:
        return merge(args.merge, args.output)
    if args.update_docs:
        return update_docs(args.output, args.update_docs)
    if args.child:
        row = run_one(args.child, args.steps, args.min_parity, args.target_accuracy, args.max_pretrain_epochs,
                      args.max_pretrain_seconds, args.min_float_accuracy)
        print("RESULT " + json.dumps(row), flush=True)
        return 0
    names = args.only.split(",") if args.only else list(EXTRA) + list(APPLICATIONS)
    rows: dict[str, dict] = {}

    def child(name: str) -> dict:
        command = [sys.executable, os.path.abspath(__file__), "--child", name, "--steps", str(args.steps),
                   "--min_parity", str(args.min_parity), "--target_accuracy", str(args.target_accuracy),
                   "--max_pretrain_epochs", str(args.max_pretrain_epochs),
                   "--max_pretrain_seconds", str(args.max_pretrain_seconds),
                   "--min_float_accuracy", str(args.min_float_accuracy)]
        proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT})
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        tail = proc.stderr.strip().splitlines()[-1:] if proc.stderr.strip() else []
        return json.loads(lines[-1][7:]) if lines else {"model": name, "ok": False, "error": f"child exit {proc.returncode}: {tail}"}

    def write() -> int:
        done = [rows[n] for n in list(EXTRA) + list(APPLICATIONS) if n in rows]  # bench order, whatever --only's
        passed = sum(bool(r["ok"]) for r in done)
        payload = {"provenance": stamp(script=__file__), "passed": passed, "total": len(done), "planned": len(names), "steps": args.steps,
                   "target_accuracy": args.target_accuracy, "max_pretrain_epochs": args.max_pretrain_epochs,
                   "max_pretrain_seconds": args.max_pretrain_seconds,
                   "min_float_accuracy": args.min_float_accuracy, "min_parity": args.min_parity,
                   "command": "python bench/bench_qat_coverage.py " + " ".join(sys.argv[1:]), "data": "sklearn digits (1,000 train + 200 to stop pre-training / 200 test), resized", "rows": done}
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        tmp = args.output + ".tmp"
        with open(tmp, "w") as handle:
            json.dump(payload, handle, indent=1)
        os.replace(tmp, args.output)
        return passed

    from concurrent.futures import ThreadPoolExecutor, as_completed

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(child, name): name for name in names}
        for future in as_completed(futures):
            row = future.result()
            rows[futures[future]] = row
            write()
            print(f"{'OK  ' if row['ok'] else 'FAIL'} {row['model']:<17} parity {row.get('parity_top1', '-'):<7} "
                  f"float ops {len(row.get('float_compute_ops', [])):<3} kept float {len(row.get('kept_float', [])):<3} "
                  f"{row.get('seconds', 0):>6} s  {row.get('error', '')}", flush=True)
    passed = write()
    print(f"\nKeras 3 QAT: wrap + fine-tune + int8 convert + parity >= {args.min_parity}: {passed}/{len(names)}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
