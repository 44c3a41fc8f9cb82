"""`tfopt export-onnx MODEL --output OUT.onnx [--data DATA.npz] [--opset 17] [--json OUT.json]`."""

from __future__ import annotations

import numpy as np
from absl import flags

from tfopt._cli import checks, common

NAME = "export-onnx"
HELP = "Export a float Keras model to ONNX (tf2onnx) and check parity in onnxruntime."


def define_flags(fv: flags.FlagValues) -> None:
    common.define_output_flag(fv, "The .onnx file to write.")
    common.define_data_flag(fv, "An .npz whose x_test inputs are compared in onnxruntime (random inputs otherwise).")
    common.define_json_flag(fv)
    flags.DEFINE_integer("opset", None, "ONNX opset (default 17).", lower_bound=7, upper_bound=30, flag_values=fv)
    common.define_num_samples_flag(fv, 256, "Test inputs compared in onnxruntime.")
    common.define_alias(fv, "onnx_samples", "num_samples")
    common.define_unsafe_flag(fv)


def main(args: list[str], fv: flags.FlagValues) -> int:
    from tfopt.export.onnx_export import export_onnx

    if len(args) != 1:
        raise common.CLIError(f"expected one MODEL (.keras or .h5 file); received {len(args)} arguments: "
                              f"{' '.join(args) or 'none'}. Usage: tfopt export-onnx MODEL --output OUT.onnx")
    if not fv.output:
        raise common.CLIError("pass --output OUT.onnx for the ONNX file to write.")
    checks.check_paths(inputs={"MODEL": args[0], "--data": fv.data}, outputs={"--output": fv.output, "--json": fv.json})
    common.check_model_file(args[0], (".keras", ".h5", ".hdf5"))
    data = checks.load_npz(fv.data, required=("x_test",))["x_test"] if fv.data else None
    model = common.load_keras(args[0], unsafe=fv.unsafe)
    if data is not None:
        checks.check_x(np.asarray(data), "x_test", fv.data, input_shape=checks.keras_io(model)[0])
    result = export_onnx(model, fv.output, opset=fv.opset, data=data, num_samples=fv.num_samples)
    print(result.summary())
    if fv.json:
        paths = {"onnx": result.path, **({} if fv.json == common.STDOUT else {"json": fv.json})}
        common.write_json(fv.json, {"model": args[0], **result.to_dict(), "paths": paths})
    return 0
