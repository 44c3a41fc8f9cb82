"""`tfopt bench` on .tflite files shaped like real-world ones, built offline: which benchmark, which are explained.

No network, so the files are built here the way other projects build theirs:
MobileNetV2 classifiers (float32; int8 with uint8 input / output like hosted
models), an SSD-like detector with two heads (and a variant with NMS post-processing),
a U-Net-ish segmenter with Conv2DTranspose (float32 and int8), a face-landmark
regressor with two outputs (int8), an audio 1-D conv net with a dynamic length,
a keyword-spotting LSTM, a model with two signatures (from_concrete_functions),
a dynamic-batch classifier, a model with a custom op (flatbuffer edit), a model
with TensorFlow (Flex) ops, and corrupted copies (truncated, bytes flipped, not a
flatbuffer).

For each file: the real CLI (`python -m tfopt.cli bench FILE`) in a subprocess,
then `tfopt.benchmark_sweep` (threads 1,2; batch 1,4), `tfopt.delegate_report`
and the TFLite Micro check (`tfopt.export_micro`). Done when nothing crashes the
caller: every file is either benchmarked or explained in one line.

    .venv/bin/python bench/bench_realworld.py [--runs 20] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _provenance import stamp  # noqa: E402  (bench/_provenance.py: commit, date, host, command)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from tfopt._io import write_json

HERE = os.path.dirname(os.path.abspath(__file__))


def _calib(shape, n=32, seed=0, high=1.0):
    return (
        np.random.default_rng(seed).uniform(0, high, size=(n, *shape)).astype("float32")
    )


def build_models(folder: str) -> list[dict]:
    """Writes the .tflite files; returns [{name, kind, path, input_shape?}]."""
    import keras
    import tensorflow as tf

    from tfopt.export.convert import convert

    made = []

    def save(name, kind, content, **extra):
        path = os.path.join(folder, f"{name}.tflite")
        with open(path, "wb") as handle:
            handle.write(bytes(content))
        made.append({"name": name, "kind": kind, "path": path, **extra})
        return path

    def concrete(fn, specs, converter_opts=None):
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [fn.get_concrete_function(*specs)], fn
        )
        for key, value in (converter_opts or {}).items():
            setattr(converter, key, value)
        return converter.convert()

    keras.utils.set_random_seed(0)
    # Classification: MobileNetV2 (alpha 0.35, 96x96), float32 and int8 with uint8 I/O.
    mobilenet = keras.applications.MobileNetV2(
        input_shape=(96, 96, 3),
        alpha=0.35,
        weights=None,
        classes=10,
        classifier_activation=None,
    )
    save("mobilenet_v2_float32", "classification, float32", convert(mobilenet).tflite)
    save(
        "mobilenet_v2_uint8",
        "classification, int8 (uint8 I/O)",
        convert(
            mobilenet,
            mode="int8",
            calibration=_calib((96, 96, 3)),
            input_type="uint8",
            output_type="uint8",
        ).tflite,
    )
    # Detection: SSD-like heads on a MobileNetV2 feature map: boxes [N, 4] and class scores [N, C].
    backbone = keras.applications.MobileNetV2(
        input_shape=(96, 96, 3), alpha=0.35, weights=None, include_top=False
    )
    features = backbone.output
    boxes = keras.layers.Reshape((-1, 4), name="boxes")(
        keras.layers.Conv2D(3 * 4, 3, padding="same")(features)
    )
    scores = keras.layers.Reshape((-1, 5), name="scores")(
        keras.layers.Conv2D(3 * 5, 3, padding="same", activation="sigmoid")(features)
    )
    detector = keras.Model(backbone.input, [boxes, scores], name="ssd_like")
    save("ssd_like_float32", "detection, 2 outputs, float32", convert(detector).tflite)
    save(
        "ssd_like_int8",
        "detection, 2 outputs, int8",
        convert(
            detector,
            mode="int8",
            calibration=_calib((96, 96, 3)),
            input_type="int8",
            output_type="int8",
        ).tflite,
    )

    @tf.function
    def detect_nms(image):
        box, score = detector(image, training=False)
        best = tf.reduce_max(score[0], axis=-1)
        keep = tf.image.non_max_suppression(
            box[0], best, max_output_size=10, iou_threshold=0.5
        )
        return {"boxes": tf.gather(box[0], keep), "scores": tf.gather(best, keep)}

    save(
        "ssd_like_nms_float32",
        "detection + NMS post-processing, dynamic output size",
        concrete(detect_nms, [tf.TensorSpec([1, 96, 96, 3], tf.float32)]),
    )
    # Segmentation: U-Net-ish with Conv2DTranspose and skip connections.
    image = keras.Input((64, 64, 3), name="image")
    c1 = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(image)
    p1 = keras.layers.MaxPooling2D()(c1)
    c2 = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(p1)
    p2 = keras.layers.MaxPooling2D()(c2)
    b = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(p2)
    u2 = keras.layers.Concatenate()(
        [keras.layers.Conv2DTranspose(16, 2, strides=2)(b), c2]
    )
    u1 = keras.layers.Concatenate()(
        [keras.layers.Conv2DTranspose(8, 2, strides=2)(u2), c1]
    )
    mask = keras.layers.Conv2D(4, 1, name="mask")(u1)
    unet = keras.Model(image, mask, name="unet")
    save("unet_float32", "segmentation, float32", convert(unet).tflite)
    save(
        "unet_int8",
        "segmentation, int8",
        convert(
            unet,
            mode="int8",
            calibration=_calib((64, 64, 3)),
            input_type="int8",
            output_type="int8",
        ).tflite,
    )
    # Landmarks: 468 x 3 points plus a face-presence score, int8 with uint8 input.
    face = keras.Input((96, 96, 3), name="face")
    x = face
    for filters in (16, 32, 64):
        x = keras.layers.Conv2D(
            filters, 3, strides=2, padding="same", activation="relu"
        )(x)
        x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    points = keras.layers.Dense(468 * 3, name="landmarks")(x)
    presence = keras.layers.Dense(1, activation="sigmoid", name="presence")(x)
    landmark = keras.Model(face, [points, presence], name="landmarks")
    save(
        "landmarks_uint8",
        "landmarks, 2 outputs, int8 (uint8 I/O)",
        convert(
            landmark,
            mode="int8",
            calibration=_calib((96, 96, 3)),
            input_type="uint8",
            output_type="uint8",
        ).tflite,
    )
    # Audio: 1-D convs over a waveform of any length (dynamic dimension).
    wave = keras.Input((None, 1), name="waveform")
    a = keras.layers.Conv1D(8, 9, strides=4, activation="relu")(wave)
    a = keras.layers.Conv1D(16, 9, strides=4, activation="relu")(a)
    a = keras.layers.GlobalAveragePooling1D()(a)
    audio = keras.Model(wave, keras.layers.Dense(12, name="keywords")(a), name="audio")
    save(
        "audio_conv1d_dynamic",
        "audio, dynamic length",
        concrete(
            tf.function(lambda w: audio(w)), [tf.TensorSpec([1, None, 1], tf.float32)]
        ),
        input_shape="0=1,16000,1",
    )
    # Keyword spotting with an LSTM over 49 frames of 40 MFCCs.
    frames = keras.Input((49, 40), name="mfcc")
    kws = keras.Model(
        frames, keras.layers.Dense(12)(keras.layers.LSTM(32)(frames)), name="kws"
    )
    save("kws_lstm_float32", "audio, LSTM", convert(kws).tflite)
    # Two signatures in one file (frozen weights, as exported models carry them).
    rng = np.random.default_rng(0)
    w_enc, w_dec = (
        tf.constant(rng.normal(size=(16, 8)), tf.float32),
        tf.constant(rng.normal(size=(8, 16)), tf.float32),
    )
    module = tf.Module()
    module.encode = tf.function(
        lambda x: {"code": tf.nn.relu(x @ w_enc)},
        input_signature=[tf.TensorSpec([1, 16], tf.float32, name="x")],
    )
    module.decode = tf.function(
        lambda c: {"recon": c @ w_dec},
        input_signature=[tf.TensorSpec([1, 8], tf.float32, name="c")],
    )
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.encode.get_concrete_function(), module.decode.get_concrete_function()],
        module,
    )
    save("two_signatures", "2 signatures (encode / decode)", converter.convert())
    # A classifier with a dynamic batch, for batch sweeps.
    small = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10),
        ]
    )
    save(
        "dynamic_batch_cnn",
        "classification, dynamic batch",
        concrete(
            tf.function(lambda x: small(x)),
            [tf.TensorSpec([None, 28, 28, 1], tf.float32)],
        ),
    )
    # Flex (TensorFlow) ops, as in many converted research models: Erf has no builtin kernel.
    gelu_erf = tf.function(lambda x: {"y": tf.math.erf(x) * 2.0})
    save(
        "flex_erf",
        "TensorFlow (Flex) op",
        concrete(
            gelu_erf,
            [tf.TensorSpec([1, 64], tf.float32)],
            {"target_spec": _flex_spec(tf)},
        ),
    )
    # A custom op: the first op of the float classifier renamed to a vendor op.
    from ai_edge_litert.tools import flatbuffer_utils as fu

    with open(made[0]["path"], "rb") as handle:
        base = handle.read()
    obj = fu.read_model_from_bytearray(bytearray(base))
    code = obj.operatorCodes[obj.subgraphs[0].operators[0].opcodeIndex]
    code.builtinCode = code.deprecatedBuiltinCode = 32
    code.customCode = "VendorFusedConv"
    save(
        "custom_op", "custom op (VendorFusedConv)", fu.convert_object_to_bytearray(obj)
    )
    # Corrupted copies.
    save("corrupt_truncated", "corrupted: truncated to half", base[: len(base) // 2])
    flipped = bytearray(base)
    rng = np.random.default_rng(1)
    for pos in rng.integers(64, 4096, size=64):
        flipped[pos] ^= 0xFF
    save("corrupt_flipped", "corrupted: 64 bytes flipped in the header tables", flipped)
    save(
        "not_tflite",
        "not a flatbuffer (random bytes)",
        rng.integers(0, 256, 2048, dtype=np.uint8).tobytes(),
    )
    return made


def _flex_spec(tf):
    spec = tf.lite.TargetSpec()
    spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    return spec


def run_cli(path: str, runs: int, input_shape: str | None) -> tuple[int, str]:
    cmd = [
        sys.executable,
        "-m",
        "tfopt.cli",
        "bench",
        path,
        "--runs",
        str(runs),
        "--warmup_runs",
        "2",
    ]
    if input_shape:
        cmd += ["--input_shape", input_shape]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=os.path.dirname(HERE))
    proc = subprocess.run(
        cmd, check=False, capture_output=True, text=True, env=env, timeout=600
    )
    text = (proc.stdout + proc.stderr).strip().splitlines()
    lines = [
        line
        for line in text
        if line.startswith(("latency", "XNNPACK", "tfopt bench", "note"))
    ]
    return proc.returncode, " | ".join(lines)[:400]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument(
        "--keep", default=None, help="folder to keep the .tflite files in"
    )
    parser.add_argument(
        "--output", default=os.path.join(HERE, "results", "bench_realworld.json")
    )
    args = parser.parse_args()
    from tfopt.measure.benchmark import BenchmarkError
    from tfopt.measure.delegates import delegate_report
    from tfopt.export.micro import export_micro
    from tfopt.measure.sweep import benchmark_sweep

    folder = args.keep or tempfile.mkdtemp(prefix="tfopt-realworld-")
    os.makedirs(folder, exist_ok=True)
    start = time.perf_counter()
    models = build_models(folder)
    print(
        f"built {len(models)} files in {time.perf_counter() - start:.0f} s in {folder}\n"
    )
    rows = []
    for m in models:
        row = {
            "name": m["name"],
            "kind": m["kind"],
            "size_kb": round(os.path.getsize(m["path"]) / 1024, 1),
        }
        row["cli_rc"], row["cli"] = run_cli(m["path"], args.runs, m.get("input_shape"))
        shapes = None
        if m.get("input_shape"):
            key, dims = m["input_shape"].split("=")
            shapes = {key: [int(d) for d in dims.split(",")]}
        for label, call in (
            (
                "sweep",
                lambda m=m, shapes=shapes: benchmark_sweep(
                    m["path"],
                    threads=(1, 2),
                    batch_sizes=(1, 4),
                    num_runs=args.runs,
                    input_shapes=shapes,
                ),
            ),
            (
                "delegates",
                lambda m=m, shapes=shapes: delegate_report(
                    m["path"], input_shapes=shapes
                ),
            ),
            (
                "micro",
                lambda m=m: export_micro(
                    m["path"],
                    os.path.join(folder, "micro"),
                    name=m["name"],
                    num_samples=3,
                ),
            ),
        ):
            try:
                result = call()
            except (BenchmarkError, ValueError, ImportError) as err:
                row[label] = f"explained: {type(err).__name__}: {str(err)[:200]}"
                continue
            if label == "sweep":
                row[label] = [
                    (
                        p.num_threads,
                        p.batch_size,
                        None if p.error else round(p.latency_ms_median, 3),
                        None if p.error else round(p.peak_rss_mb, 1),
                    )
                    for p in result.points
                ]
            elif label == "delegates":
                row[label] = {
                    "xnnpack": f"{result.xnnpack_delegated_ops}/{result.xnnpack_total_ops}",
                    "gpu_compatible": result.gpu_compatible,
                    "gpu_blockers": list(result.gpu_blockers[:4]),
                }
            else:
                row[label] = {
                    "ok": result.ok,
                    "arena_bytes": result.arena_bytes,
                    "unsupported": [u.op for u in result.unsupported_ops],
                }
        row["outcome"] = (
            "benchmarked"
            if row["cli_rc"] == 0
            else "explained"
            if row["cli_rc"] == 2
            else "CRASH"
        )
        rows.append(row)
        print(f"{m['name']:<24} {row['outcome']:<11} {row['cli'][:150]}")
        print(f"{'':<24} sweep {row['sweep']}")
        print(f"{'':<24} delegates {row['delegates']}   micro {row['micro']}")
    checks = {
        "no_crash": all(r["outcome"] != "CRASH" for r in rows),
        "benchmarked": sum(r["outcome"] == "benchmarked" for r in rows),
        "explained": sum(r["outcome"] == "explained" for r in rows),
        "total": len(rows),
    }
    print("\nchecks:", checks, f"({time.perf_counter() - start:.0f} s)")
    write_json(args.output, {"provenance": stamp(script=__file__), "rows": rows, "checks": checks, "folder": folder})
    print(f"wrote {args.output}")
    return 0 if checks["no_crash"] else 1


if __name__ == "__main__":
    sys.exit(main())
