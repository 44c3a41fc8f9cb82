"""`tfopt quantize MODEL --data DATA.npz --method qat|ptq --mode int8|16x8|int4 --output OUT.tflite`.

Reports, on x_test / y_test, the accuracy of the float Keras model and of the
.tflite, the parity figures between them, and the layers / ops kept in float
with the reason.
"""

from __future__ import annotations

import os

import numpy as np
from absl import flags

from tfopt import _keras
from tfopt._cli import common
from tfopt._cli.common import FLAGS

NAME = "quantize"
HELP = "Quantize a model (QAT or post-training: int8, 16x8, int4) and check the .tflite against it."

flags.DEFINE_enum("method", "ptq", ["ptq", "qat"], "Post-training quantization or quantization-aware training.")
flags.DEFINE_float("max_accuracy_drop", None, "PTQ: keep the most sensitive ops float until the .tflite is within this "
                   "accuracy drop (fraction, 0.005 = half a point) of the float model on x_test.")
flags.DEFINE_float("qat_learning_rate", 1e-4, "Adam learning rate for QAT fine-tuning.")
flags.DEFINE_integer("num_calibration", 300, "Calibration examples drawn from x_train.")

DEFAULT_EPOCHS = 1


QUANTIZE_MODES = ("int8", "16x8", "int4")


def main(args: list[str]) -> int:
    if len(args) != 1:
        raise common.CLIError(f"Expected one MODEL path (.keras / .h5). Received: {args!r}.")
    if not FLAGS.output or not FLAGS.output.endswith(".tflite"):
        raise common.CLIError(f"Pass --output OUT.tflite. Received: --output={FLAGS.output!r}.")
    mode = FLAGS.mode or "int8"
    if mode not in QUANTIZE_MODES:
        raise common.CLIError(f"unknown --mode {mode!r} for quantize; expected one of {QUANTIZE_MODES}.")
    if FLAGS.method == "qat" and mode != "int8":
        raise common.CLIError(f"--method qat produces int8 models; received --mode {mode}. Use --method ptq for 16x8 / int4.")
    data = common.load_npz(FLAGS.data)
    x_train, y_train, x_test, y_test = (data[k] for k in common.DATA_KEYS)
    model = _keras.load_model(args[0])
    from tfopt.export.calibration import calibration_data
    from tfopt.export.convert import convert
    from tfopt.measure.parity import compare

    calibration = calibration_data(x_train, model=model, num_samples=FLAGS.num_calibration, seed=FLAGS.seed)
    kept_float: list[dict] = []
    reference = model
    if FLAGS.method == "qat":
        import tf_keras

        from tfopt.compress.qat import qat_summary, quantize

        epochs = FLAGS.epochs if FLAGS.epochs is not None else DEFAULT_EPOCHS
        tf_keras.utils.set_random_seed(FLAGS.seed)
        qat = quantize(model, exclude=FLAGS.exclude)
        outputs = np.asarray(model.predict(x_train[:64], verbose=0))
        logits = not (np.all(outputs >= 0) and np.allclose(outputs.sum(-1), 1.0, atol=1e-3))
        sparse = y_train.ndim == 1 or y_train.shape[-1] == 1
        loss = (tf_keras.losses.SparseCategoricalCrossentropy if sparse else tf_keras.losses.CategoricalCrossentropy)(from_logits=logits)
        qat.compile(tf_keras.optimizers.Adam(FLAGS.qat_learning_rate), loss=loss)
        if epochs > 0:
            qat.fit(x_train, y_train, epochs=epochs, batch_size=FLAGS.batch_size or 32, verbose=0)
        result = convert(qat, mode="int8", calibration=calibration_data(x_train, model=qat, num_samples=FLAGS.num_calibration))
        kept_float = [{"name": f.name, "class_name": f.class_name, "reason": f.reason} for f in qat_summary(qat).kept_float]
        reference = qat
    elif FLAGS.max_accuracy_drop is not None:
        from tfopt.export.selective import quantize_selective

        selective = quantize_selective(
            model, calibration=calibration, validation=(x_test, y_test), max_accuracy_drop=FLAGS.max_accuracy_drop,
            exclude=FLAGS.exclude, recipe=mode,
        )
        result = selective.result
        kept_float = [{"name": name, "reason": "kept float to meet --max_accuracy_drop" if name not in (FLAGS.exclude or []) else "--exclude"}
                      for name in selective.kept_float]
    else:
        from tfopt.export.quantizer import quantize_tflite

        result = quantize_tflite(model, recipe=mode, calibration=calibration, exclude=FLAGS.exclude)
        kept_float = [{"name": name, "reason": "--exclude"} for name in FLAGS.exclude or []]
    result.save(FLAGS.output)
    parity = compare(reference, result, (x_test, y_test), localize=False)
    float_parity = parity if reference is model else compare(model, result, (x_test, y_test), localize=False)
    for op in result.inspection.float_compute_ops:
        kept_float.append({"name": f"{op.name}#{op.index}", "reason": "compute op left in float in the .tflite"})
    report = {
        "model": os.path.abspath(args[0]),
        "method": FLAGS.method,
        "mode": mode,
        "float_accuracy": float_parity.reference_accuracy,
        "tflite_accuracy": parity.candidate_accuracy,
        "qat_keras_accuracy": parity.reference_accuracy if FLAGS.method == "qat" else None,
        "parity": parity.to_dict(),
        "size_bytes": result.size_bytes,
        "precision": result.inspection.precision_counts,
        "kept_float": kept_float,
        "paths": {"output": os.path.abspath(FLAGS.output)},
    }
    if FLAGS.json:
        report["paths"]["json"] = os.path.abspath(FLAGS.json)
        common.write_json(FLAGS.json, report)
    print(f"{FLAGS.method} {mode}: accuracy float {100 * report['float_accuracy']:.2f}% -> .tflite "
          f"{100 * report['tflite_accuracy']:.2f}%, top-1 agreement {100 * parity.top1_agreement:.2f}%, "
          f"{result.size_bytes / 1024:.1f} KB, compute ops {report['precision']}")
    for item in kept_float:
        print(f"  float: {item['name']}: {item['reason']}")
    print(f"wrote {FLAGS.output}" + (f" and {FLAGS.json}" if FLAGS.json else ""))
    return 0
