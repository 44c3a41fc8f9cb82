"""`tfopt qat MODEL --data DATA.npz --output OUT.tflite [--epochs 1] [--exclude LAYERS]`: QAT, then int8 convert.

Fine-tunes the model with fake quantization (quantization-aware training) on
x_train / y_train, converts it to a full-int8 .tflite calibrated on x_train,
and reports on x_test / y_test the accuracy of the float model, of the QAT
Keras model and of the .tflite, the parity figures, and what was kept float.
Post-training quantization (no training) is `tfopt convert --mode int8`.
"""

from __future__ import annotations

import os

from absl import flags

from tfopt._cli import common, supervise, training

NAME = "qat"
HELP = "Quantization-aware training, then an int8 .tflite checked against the model (accuracy, parity)."


def define_shared_flags(fv: flags.FlagValues) -> None:
    """The flags `tfopt qat` shares with the deprecated `tfopt quantize`."""
    common.define_training_flags(fv, epochs=1, batch_size=32, learning_rate=1e-4, layers=False)
    training.define_progress_flags(fv)
    fv["output"].help = "The .tflite file to write."
    common.define_alias(fv, "qat_learning_rate", "learning_rate")
    common.define_layer_flags(fv, include=False)
    common.define_num_samples_flag(fv, 300, "Calibration examples drawn from x_train.")
    common.define_alias(fv, "num_calibration", "num_samples")


def define_flags(fv: flags.FlagValues) -> None:
    define_shared_flags(fv)


def main(args: list[str], fv: flags.FlagValues) -> int:
    return supervise.run(NAME, args, fv, _work, outputs=(fv.output, fv.json),
                         check=lambda: training.check_call(args, fv, NAME, output_suffixes=(".tflite",)))


def _work(args: list[str], fv: flags.FlagValues) -> int:
    run = training.training_run(args, fv, NAME, output_suffixes=(".tflite",))
    return run_qat(args, fv, run, method=NAME)


def run_qat(args: list[str], fv: flags.FlagValues, run: training.TrainingRun, *, method: str) -> int:
    """QAT fine-tune, int8 convert, parity report (shared with `tfopt quantize --method qat`)."""
    from tfopt.compress import qat as qat_module
    from tfopt.export.calibration import calibration_data
    from tfopt.export.convert import convert

    model, x_train, y_train = run.model, run.x_train, run.y_train
    prepare = getattr(qat_module, "qat", None) or qat_module.quantize
    supervise.stage("preparing the model for quantization-aware training", model=model)
    qat_model = prepare(model, exclude=run.exclude)
    keras = training.keras_of(qat_model)
    keras.utils.set_random_seed(fv.seed)
    qat_model.compile(keras.optimizers.Adam(fv.learning_rate),
                      loss=training.classification_loss(keras, model, x_train[:64], y_train))
    training.fit(qat_model, x_train, y_train, fv, epochs=run.epochs, batch_size=run.batch_size,
                 what="quantization-aware training")
    supervise.stage("converting to an int8 .tflite", model=qat_model)
    calibration = calibration_data(x_train, model=qat_model, num_samples=fv.num_samples, seed=fv.seed)
    with training.quiet_converter():
        result = convert(qat_model, mode="int8", calibration=calibration)
    kept_float = [{"name": f.name, "class_name": f.class_name, "reason": f.reason}
                  for f in qat_module.qat_summary(qat_model).kept_float]
    return finish(args, fv, run, result, method=method, mode="int8", reference=qat_model, kept_float=kept_float)


def finish(args: list[str], fv: flags.FlagValues, run: training.TrainingRun, result, *, method: str, mode: str,
           reference, kept_float: list[dict]) -> int:
    """Saves the .tflite, compares it with the Keras model(s) on x_test and writes the report."""
    from tfopt.measure.parity import compare

    model, x_test, y_test = run.model, run.x_test, run.y_test
    supervise.stage("saving the .tflite and comparing it with the Keras model", model=model)
    result.save(fv.output)
    parity = compare(reference, result, (x_test, y_test), localize=False)
    float_parity = parity if reference is model else compare(model, result, (x_test, y_test), localize=False)
    for op in result.inspection.float_compute_ops:
        kept_float.append({"name": f"{op.name}#{op.index}", "reason": "compute op left in float in the .tflite"})
    report = {
        "model": os.path.abspath(args[0]),
        "method": "qat" if method == "qat" else "ptq",
        "mode": mode,
        "float_accuracy": float_parity.reference_accuracy,
        "tflite_accuracy": parity.candidate_accuracy,
        "qat_keras_accuracy": parity.reference_accuracy if reference is not model else None,
        "parity": parity.to_dict(),
        "size_bytes": result.size_bytes,
        "precision": result.inspection.precision_counts,
        "kept_float": kept_float,
        "paths": training.report_paths(fv),
    }
    if fv.json:
        common.write_json(fv.json, report)
    print(f"{report['method']} {mode}: accuracy float {100 * report['float_accuracy']:.2f}% -> .tflite "
          f"{100 * report['tflite_accuracy']:.2f}%, top-1 agreement {100 * parity.top1_agreement:.2f}%, "
          f"{result.size_bytes / 1024:.1f} KB, compute ops {report['precision']}")
    for item in kept_float:
        print(f"  float: {item['name']}: {item['reason']}")
    print(f"wrote {fv.output}" + (f" and {common.shown_path(fv.json)}" if fv.json else ""))
    return 0
