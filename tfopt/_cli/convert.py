"""`tfopt convert MODEL --mode int8 --calibration DATA.npz --output OUT.tflite`."""

from __future__ import annotations

import os

from absl import flags

from tfopt._cli.common import FLAGS, CLIError, load_npz, write_json

NAME = "convert"
HELP = "convert a .keras/.h5/SavedModel to .tflite (float32, float16, dynamic, int8, int16x8)"

flags.DEFINE_string("calibration", None, "An .npz whose x_train (or x) calibrates int8 / int16x8.")
flags.DEFINE_integer("num_samples", 200, "Calibration examples to draw.")
flags.DEFINE_string("input_type", "float32", "Model input dtype: float32, int8, uint8, int16.")
flags.DEFINE_string("output_type", "float32", "Model output dtype: float32, int8, uint8, int16.")


def main(args: list[str]) -> int:
    from tfopt import _keras
    from tfopt.export.calibration import calibration_data
    from tfopt.export.convert import CONVERT_MODES, convert

    if len(args) != 1:
        raise CLIError(f"convert takes one MODEL path; received {args}. Usage: tfopt convert MODEL --output OUT.tflite")
    mode = FLAGS.mode or "float32"
    if mode not in CONVERT_MODES:
        raise CLIError(f"unknown --mode {mode!r}; expected one of {CONVERT_MODES}.")
    if not FLAGS.output:
        raise CLIError("pass --output OUT.tflite.")
    source = args[0]
    if not os.path.exists(source):
        raise CLIError(f"model not found: {source!r}. Pass a .keras / .h5 file or a SavedModel folder.")
    model = source if os.path.isdir(source) else _keras.load_model(source)
    calibration = None
    if mode in ("int8", "int16x8"):
        if not FLAGS.calibration:
            raise CLIError(f"--mode {mode} needs --calibration DATA.npz (with x_train or x).")
        arrays = load_npz(FLAGS.calibration, required=())
        key = "x_train" if "x_train" in arrays else "x" if "x" in arrays else None
        if key is None:
            raise CLIError(f"{FLAGS.calibration!r} holds {sorted(arrays)}; expected an x_train or x array.")
        if isinstance(model, str):
            calibration = arrays[key]
        else:
            calibration = calibration_data(arrays[key], model=model, num_samples=FLAGS.num_samples, seed=FLAGS.seed)
    result = convert(
        model,
        mode=mode,
        calibration=calibration,
        input_type=FLAGS.input_type,
        output_type=FLAGS.output_type,
        output=FLAGS.output,
    )
    print(result.summary())
    if FLAGS.json:
        write_json(FLAGS.json, result.to_dict())
    return 0
