"""`tfopt convert MODEL --output OUT.tflite [--mode int8 --calibration DATA.npz] [--engine converter|litert_quantizer]`.

MODEL is a .keras / .h5 file or a SavedModel folder (with `--engine litert_quantizer`
also a float .tflite). Post-training quantization
has one command: `--engine converter` (TFLite converter: float32, float16,
dynamic, int8, int16x8) or `--engine litert_quantizer` (LiteRT Quantizer: int8,
int16x8, int4).
"""

from __future__ import annotations

import os

from absl import flags

from tfopt._cli import checks, common
from tfopt._cli.common import CLIError

NAME = "convert"
HELP = "convert a .keras/.h5/SavedModel to .tflite (float32, float16, dynamic, int8, int16x8; int4 via the quantizer)"

CONVERTER_MODES = ("float32", "float16", "dynamic", "int8", "int16x8")
QUANTIZER_MODES = ("int8", "int16x8", "int4")
ENGINES = ("converter", "litert_quantizer")


def define_flags(fv: flags.FlagValues) -> None:
    common.define_output_flag(fv, "The .tflite file to write.")
    common.define_json_flag(fv)
    flags.DEFINE_string("mode", "float32", "converter: float32, float16, dynamic, int8, int16x8; "
                        "litert_quantizer: int8, int16x8, int4 (16x8 is the old spelling of int16x8).", flag_values=fv)
    flags.DEFINE_enum("engine", "converter", list(ENGINES), "Who quantizes: the TFLite converter or the LiteRT "
                      "Quantizer.", flag_values=fv)
    flags.DEFINE_string("calibration", None, "An .npz whose x_train (or x) calibrates int8 / int16x8.", flag_values=fv)
    common.define_num_samples_flag(fv, 200, "Calibration examples to draw.")
    flags.DEFINE_enum("input_type", None, ["float32", "int8", "uint8", "int16"], "Model input dtype (default: "
                      "float32 with the converter; integer with the quantizer's static recipes).", flag_values=fv)
    flags.DEFINE_enum("output_type", None, ["float32", "int8", "uint8", "int16"], "Model output dtype (default as "
                      "--input_type).", flag_values=fv)
    flags.DEFINE_multi_string("float_fallback", None, "Ops to keep float in a quantized model: layer names or "
                              "re:<regex>, separated by commas (repeatable); or `auto`: keep the ops that add the most "
                              "error float until within --max_accuracy_drop (validated on x_test / y_test of "
                              "--calibration when it has them).", flag_values=fv)
    flags.DEFINE_float("max_accuracy_drop", 0.005, "Tolerance of --float_fallback auto (fraction; 0.005 = half a "
                       "point).", flag_values=fv)
    common.define_range_validator(fv, "max_accuracy_drop", 0, 1, high_open=True)
    flags.DEFINE_boolean("per_channel_dense", True, "One scale per output channel for Dense weights "
                         "(--noper_channel_dense: one per tensor, a smaller TFLite Micro arena).", flag_values=fv)
    flags.DEFINE_boolean("sparse", False, "Store mostly-zero weights in LiteRT's sparse encoding (converter).",
                         flag_values=fv)
    common.define_seed_flag(fv)
    common.define_unsafe_flag(fv)


def main(args: list[str], fv: flags.FlagValues) -> int:
    if len(args) != 1:
        raise CLIError(f"convert takes one MODEL path; received {args}. Usage: tfopt convert MODEL --output OUT.tflite")
    source = args[0]
    quantizer = fv.engine == "litert_quantizer"
    mode = common.canonical_mode(fv.mode, QUANTIZER_MODES if quantizer else CONVERTER_MODES, "float32")
    if not fv.output:
        raise CLIError("pass --output OUT.tflite.")
    fallback = common.layer_rule(fv.float_fallback, "float_fallback")
    auto = fallback == ["auto"]
    if fallback and mode not in ("int8", "int16x8", "int4"):
        raise CLIError(f"--float_fallback keeps ops float in a quantized model; --mode {mode} quantizes no "
                       "activations. Use --mode int8 or int16x8.")
    if fv["max_accuracy_drop"].present and not auto:
        raise CLIError("--max_accuracy_drop is the tolerance of --float_fallback auto; add --float_fallback auto.")
    needs_calibration = mode in ("int8", "int16x8") or auto
    if needs_calibration and not fv.calibration:
        raise CLIError(f"--mode {mode}" + (" with --float_fallback auto" if auto else "")
                       + " needs --calibration DATA.npz (with x_train or x).")
    checks.check_paths(inputs={"MODEL": source, "--calibration": fv.calibration},
                       outputs={"--output": fv.output, "--json": fv.json})
    if not os.path.exists(source):
        raise CLIError(f"model not found: {source!r}. Pass a .keras / .h5 file or a SavedModel folder.")
    if source.endswith(".tflite"):
        if not quantizer:
            raise CLIError(f"{source!r} is already a .tflite; to quantize a float .tflite pass --engine "
                           "litert_quantizer, or convert the Keras model.")
        checks.check_tflite(source)
        model = source
    else:
        common.check_model_file(source, (".keras", ".h5", ".hdf5", ".savedmodel"))
        model = source if os.path.isdir(source) else common.load_keras(source, unsafe=fv.unsafe)
    calibration, validation = _calibration(fv, model, auto) if fv.calibration else (None, None)

    from tfopt.export.convert import convert

    options = dict(mode=mode, engine=fv.engine, calibration=calibration, float_fallback="auto" if auto else fallback,
                   per_channel_dense=fv.per_channel_dense, input_type=fv.input_type, output_type=fv.output_type,
                   output=fv.output, sparse=fv.sparse, safe_mode=not fv.unsafe)
    if auto:
        options.update(validation=validation, max_accuracy_drop=fv.max_accuracy_drop)
    result = convert(model, **options)
    print(result.summary())
    if fv.json:
        common.write_json(fv.json, result.to_dict())
    return 0


def _calibration(fv: flags.FlagValues, model, auto: bool):
    """(calibration data, validation (x, y) or None) from --calibration, checked against the model."""
    from tfopt.export.calibration import calibration_data

    arrays = checks.load_npz(fv.calibration, required=(), label="--calibration")
    key = "x_train" if "x_train" in arrays else "x" if "x" in arrays else None
    if key is None:
        raise CLIError(f"--calibration {fv.calibration!r} holds {sorted(arrays)}; expected an x_train or x array.")
    input_shape, num_classes = (None, None) if isinstance(model, str) else checks.keras_io(model)
    checks.check_x(arrays[key], key, fv.calibration, input_shape=input_shape)
    validation = None
    if auto and "x_test" in arrays and "y_test" in arrays:
        checks.check_xy(arrays["x_test"], arrays["y_test"], x_name="x_test", y_name="y_test", source=fv.calibration,
                        num_classes=num_classes, input_shape=input_shape)
        validation = (arrays["x_test"], arrays["y_test"])
    if isinstance(model, str):
        return arrays[key], validation
    return calibration_data(arrays[key], model=model, num_samples=fv.num_samples, seed=fv.seed), validation
