"""`tfopt convert MODEL --output OUT.tflite [--mode int8 --calibration DATA.npz] [--engine converter|litert_quantizer]`.

MODEL is a .keras / .h5 file or a SavedModel folder (with `--engine litert_quantizer`
also a float .tflite). Post-training quantization
has one command: `--engine converter` (TFLite converter: float32, float16,
dynamic, int8, int16x8) or `--engine litert_quantizer` (LiteRT Quantizer: int8,
int16x8, int4). `--layer_precision 'fc1=int4,re:conv.*=int8,default=int8'` sets
each layer's precision (int4, int8, int16x8, float16, float32); `--layer_precision
auto --max_accuracy_drop 1 [--max_size_kb N]` chooses it on x_test / y_test of
--calibration. Exit status 3 when no layer map meets the bounds.
"""

from __future__ import annotations

import os
import sys

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
    flags.DEFINE_multi_string("layer_precision", None, "Per-layer precision: RULE=PRECISION pairs separated by "
                              "commas (RULE: a layer name or re:<regex>; PRECISION: int4, int8, int16x8, float16, "
                              "float32; default=int8 for the others), e.g. 'fc1=int4,re:conv.*=int8,default=int8'; or "
                              "`auto`: chosen on x_test / y_test of --calibration under --max_accuracy_drop and / or "
                              "--max_size_kb. Engine: litert_quantizer.", flag_values=fv)
    flags.DEFINE_float("max_accuracy_drop", None, "Allowed top-1 drop in POINTS (0.5 = half a point) for "
                       "--float_fallback auto (default 0.5) and --layer_precision auto.", flag_values=fv)
    common.define_range_validator(fv, "max_accuracy_drop", 0, 100, high_open=True)
    flags.DEFINE_float("max_accuracy_drop_fraction", None, "Deprecated: the tolerance as a fraction (0.005 = half a "
                       "point); use --max_accuracy_drop in points.", flag_values=fv)
    common.define_range_validator(fv, "max_accuracy_drop_fraction", 0, 1, high_open=True)
    flags.DEFINE_float("max_size_kb", None, "With --layer_precision auto: the largest .tflite, in KB.", flag_values=fv)
    common.define_range_validator(fv, "max_size_kb", 0, None, low_open=True)
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
    if fv.layer_precision:
        return _main_layers(source, fv)
    quantizer = fv.engine == "litert_quantizer"
    mode = common.canonical_mode(fv.mode, QUANTIZER_MODES if quantizer else CONVERTER_MODES, "float32")
    if not fv.output:
        raise CLIError("pass --output OUT.tflite.")
    if fv["max_size_kb"].present:
        raise CLIError("--max_size_kb bounds --layer_precision auto; add --layer_precision auto.")
    max_drop = _max_drop(fv)
    fallback = common.layer_rule(fv.float_fallback, "float_fallback")
    auto = fallback == ["auto"]
    if fallback and mode not in ("int8", "int16x8", "int4"):
        raise CLIError(f"--float_fallback keeps ops float in a quantized model; --mode {mode} quantizes no "
                       "activations. Use --mode int8 or int16x8.")
    if max_drop is not None and not auto:
        raise CLIError("--max_accuracy_drop is the tolerance of --float_fallback auto or --layer_precision auto; "
                       "add one of them.")
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
        options.update(validation=validation, max_accuracy_drop=0.5 if max_drop is None else max_drop)
    result = convert(model, **options)
    print(result.summary())
    if fv.json:
        common.write_json(fv.json, result.to_dict())
    return 0


def _max_drop(fv: flags.FlagValues) -> float | None:
    """--max_accuracy_drop in points; the deprecated --max_accuracy_drop_fraction warns with the value in points."""
    if fv.max_accuracy_drop_fraction is None:
        return fv.max_accuracy_drop
    if fv.max_accuracy_drop is not None:
        raise CLIError("pass --max_accuracy_drop (points) or the deprecated --max_accuracy_drop_fraction, not both.")
    points = round(100.0 * fv.max_accuracy_drop_fraction, 10)
    common.warn(f"--max_accuracy_drop_fraction is deprecated; tolerances are in points: use --max_accuracy_drop "
                f"{points:g} (for --max_accuracy_drop_fraction {fv.max_accuracy_drop_fraction:g}).")
    return points


def _main_layers(source: str, fv: flags.FlagValues) -> int:
    """convert with --layer_precision: rules or auto; exit 3 when auto's bounds cannot be met."""
    from tfopt.export.precision import LayerPrecisionConfig

    if not fv.output:
        raise CLIError("pass --output OUT.tflite.")
    if fv["engine"].present and fv.engine != "litert_quantizer":
        raise CLIError("--layer_precision is written by LiteRT Quantizer; drop --engine or pass --engine "
                       "litert_quantizer.")
    if fv.float_fallback:
        raise CLIError("pass --float_fallback or --layer_precision, not both (--float_fallback NAME is "
                       "--layer_precision NAME=float32).")
    mode = common.canonical_mode(fv.mode if fv["mode"].present else None, ("int8", "int16x8"), "int8")
    parts = [part.strip() for value in fv.layer_precision for part in common.split_rules(value) if part.strip()]
    auto = parts == ["auto"]
    max_drop = _max_drop(fv)
    if auto and max_drop is None and fv.max_size_kb is None:
        raise CLIError("--layer_precision auto needs a bound: --max_accuracy_drop POINTS and / or --max_size_kb KB.")
    if not auto and (max_drop is not None or fv.max_size_kb is not None):
        raise CLIError("--max_accuracy_drop / --max_size_kb bound --layer_precision auto; with rules they mean nothing.")
    if not fv.calibration:
        raise CLIError("--layer_precision needs --calibration DATA.npz (with x_train or x"
                       + (", and x_test / y_test to choose on)." if auto else ")."))
    if auto:
        config = LayerPrecisionConfig(auto=True, default=mode, max_accuracy_drop=max_drop, max_size_kb=fv.max_size_kb)
    else:
        pairs, default = [], mode
        for part in parts:
            rule, sep, precision = part.rpartition("=")
            if not sep or not rule:
                raise CLIError(f"--layer_precision: {part!r} is not RULE=PRECISION; e.g. "
                               "'fc1=int4,re:conv.*=int8,default=int8'.")
            if rule == "default":
                default = precision
            else:
                pairs.append((rule, precision))
        config = LayerPrecisionConfig(rules=tuple(pairs), default=default)
    checks.check_paths(inputs={"MODEL": source, "--calibration": fv.calibration},
                       outputs={"--output": fv.output, "--json": fv.json})
    if not os.path.exists(source):
        raise CLIError(f"model not found: {source!r}. Pass a .keras / .h5 file.")
    common.check_model_file(source, (".keras", ".h5", ".hdf5"))
    model = common.load_keras(source, unsafe=fv.unsafe)
    calibration, validation = _calibration(fv, model, auto)
    if auto and validation is None:
        raise CLIError(f"--layer_precision auto chooses on data the model was not trained on: add x_test and y_test "
                       f"to {fv.calibration!r}.")

    from tfopt.export.convert import convert
    from tfopt.export.precision_handler import InfeasibleBoundError

    try:
        result = convert(model, layer_precision=config, calibration=calibration, validation=validation,
                         per_channel_dense=fv.per_channel_dense, input_type=fv.input_type,
                         output_type=fv.output_type, output=fv.output, safe_mode=not fv.unsafe)
    except InfeasibleBoundError as err:
        print(f"tfopt convert: {err}", file=sys.stderr)
        if fv.json:
            common.write_json(fv.json, {"error": str(err), "nearest": err.nearest})
        return 3
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
