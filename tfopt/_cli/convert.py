"""`tfopt convert MODEL --output OUT.tflite [--mode int8 --calibration DATA.npz] [--engine converter|litert_quantizer]`.

MODEL is a .keras / .h5 file or a SavedModel folder. Post-training quantization
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
    flags.DEFINE_enum("input_type", "float32", ["float32", "int8", "uint8", "int16"], "Model input dtype.",
                      flag_values=fv)
    flags.DEFINE_enum("output_type", "float32", ["float32", "int8", "uint8", "int16"], "Model output dtype.",
                      flag_values=fv)
    common.define_layer_flags(fv, include=False)
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
    if fv.exclude and not quantizer:
        raise CLIError("--exclude keeps layers float with --engine litert_quantizer; the converter quantizes "
                       "every op it can.")
    exclude = common.layer_rule(fv.exclude, "exclude")
    needs_calibration = mode in ("int8", "int16x8")
    if needs_calibration and not fv.calibration:
        raise CLIError(f"--mode {mode} needs --calibration DATA.npz (with x_train or x).")
    checks.check_paths(inputs={"MODEL": source, "--calibration": fv.calibration},
                       outputs={"--output": fv.output, "--json": fv.json})
    if not os.path.exists(source):
        raise CLIError(f"model not found: {source!r}. Pass a .keras / .h5 file or a SavedModel folder.")
    common.check_model_file(source, (".keras", ".h5", ".hdf5", ".savedmodel"))
    model = source if os.path.isdir(source) else common.load_keras(source, unsafe=fv.unsafe)
    calibration = _calibration(fv, model) if needs_calibration else None

    if quantizer:
        from tfopt.export.quantizer import quantize_tflite

        result = quantize_tflite(model, recipe=mode, calibration=calibration, exclude=exclude, output=fv.output)
    else:
        from tfopt.export.convert import convert

        result = convert(model, mode=mode, calibration=calibration, input_type=fv.input_type,
                         output_type=fv.output_type, output=fv.output, safe_mode=not fv.unsafe)
    print(result.summary())
    if fv.json:
        common.write_json(fv.json, result.to_dict())
    return 0


def _calibration(fv: flags.FlagValues, model):
    from tfopt.export.calibration import calibration_data

    arrays = checks.load_npz(fv.calibration, required=(), label="--calibration")
    key = "x_train" if "x_train" in arrays else "x" if "x" in arrays else None
    if key is None:
        raise CLIError(f"--calibration {fv.calibration!r} holds {sorted(arrays)}; expected an x_train or x array.")
    input_shape = None if isinstance(model, str) else checks.keras_io(model)[0]
    checks.check_x(arrays[key], key, fv.calibration, input_shape=input_shape)
    if isinstance(model, str):
        return arrays[key]
    return calibration_data(arrays[key], model=model, num_samples=fv.num_samples, seed=fv.seed)
