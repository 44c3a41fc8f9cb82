"""`tfopt quantize MODEL --data DATA.npz --method qat|ptq --mode int8|int16x8|int4 --output OUT.tflite` (deprecated).

Kept so earlier scripts run: `--method qat` is `tfopt qat`, `--method ptq` is
`tfopt convert --engine litert_quantizer` (with `--max_accuracy_drop`, the most
sensitive ops stay float until the .tflite is within that accuracy drop). Both
print a deprecation warning and the same report and JSON keys as before: the
accuracy of the float Keras model and of the .tflite, parity, and what was kept float.
"""

from __future__ import annotations

from absl import flags

from tfopt._cli import common, qat, supervise, training
from tfopt._cli.common import CLIError

NAME = "quantize"
HELP = "Deprecated: use `tfopt qat` (QAT) or `tfopt convert --engine litert_quantizer` (post-training)."

QUANTIZE_MODES = ("int8", "int16x8", "int4")


def define_flags(fv: flags.FlagValues) -> None:
    qat.define_shared_flags(fv)
    flags.DEFINE_enum("method", "ptq", ["ptq", "qat"], "Post-training quantization or quantization-aware training.",
                      flag_values=fv)
    flags.DEFINE_string("mode", "int8", "int8, int16x8 or int4 (16x8 is the old spelling of int16x8).",
                        flag_values=fv)
    flags.DEFINE_float("max_accuracy_drop", None, "PTQ: keep the most sensitive ops float until the .tflite is within "
                       "this accuracy drop (fraction, 0.005 = half a point) of the float model on x_test.",
                       flag_values=fv)
    common.define_range_validator(fv, "max_accuracy_drop", 0, 1)


def main(args: list[str], fv: flags.FlagValues) -> int:
    return supervise.run(NAME, args, fv, _work, outputs=(fv.output, fv.json),
                         check=lambda: training.check_call(args, fv, NAME, output_suffixes=(".tflite",)))


def _work(args: list[str], fv: flags.FlagValues) -> int:
    mode = common.canonical_mode(fv.mode, QUANTIZE_MODES, "int8")
    if fv.method == "qat":
        common.warn("`tfopt quantize --method qat` is deprecated; use `tfopt qat` (same flags without --method).")
        if mode != "int8":
            raise CLIError(f"--method qat produces int8 models; received --mode {mode}. Use --method ptq for "
                           "int16x8 / int4.")
        run = training.training_run(args, fv, NAME, output_suffixes=(".tflite",))
        return qat.run_qat(args, fv, run, method="qat")
    common.warn("`tfopt quantize --method ptq` is deprecated; use `tfopt convert MODEL --engine litert_quantizer "
                f"--mode {mode} --calibration DATA.npz --output OUT.tflite`.")
    run = training.training_run(args, fv, NAME, output_suffixes=(".tflite",))
    return _ptq(args, fv, run, mode)


def _ptq(args: list[str], fv: flags.FlagValues, run: training.TrainingRun, mode: str) -> int:
    from tfopt.export.calibration import calibration_data
    from tfopt.export.convert import convert

    model = run.model
    supervise.stage("converting to a quantized .tflite", model=model)
    calibration = calibration_data(run.x_train, model=model, num_samples=fv.num_samples, seed=fv.seed)
    excluded = set(run.exclude or [])
    if fv.max_accuracy_drop is not None:
        import warnings

        from tfopt.export.selective import quantize_selective

        with warnings.catch_warnings(), training.quiet_converter():  # its own deprecation line is printed
            warnings.simplefilter("ignore", DeprecationWarning)
            selective = quantize_selective(model, calibration=calibration, validation=(run.x_test, run.y_test),
                                           max_accuracy_drop=fv.max_accuracy_drop, exclude=run.exclude, recipe=mode)
        result = selective.result
        kept = list(selective.kept_float)
    else:
        with training.quiet_converter():
            result = convert(model, mode=mode, engine="litert_quantizer", calibration=calibration,
                             float_fallback=run.exclude, check_delegation=False)
        kept = list(run.exclude or [])
    kept_float = [{"name": name, "reason": "--exclude" if name in excluded
                   else "kept float to meet --max_accuracy_drop"} for name in kept]
    return qat.finish(args, fv, run, result, method="ptq", mode=mode, reference=model, kept_float=kept_float)
