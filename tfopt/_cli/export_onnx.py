"""`tfopt export-onnx MODEL --output OUT.onnx [--data DATA.npz] [--json OUT.json]`."""

from __future__ import annotations

from absl import flags

from tfopt._cli import common
from tfopt._cli.common import FLAGS

NAME = "export-onnx"
HELP = "Export a float Keras model to ONNX (tf2onnx) and check parity in onnxruntime."

flags.DEFINE_integer("opset", None, "ONNX opset for export-onnx (default 17).")
flags.DEFINE_integer("onnx_samples", 256, "export-onnx: test inputs compared in onnxruntime.")


def main(args: list[str]) -> int:
    from tfopt.export.onnx_export import export_onnx

    if len(args) != 1:
        raise common.CLIError(f"expected one MODEL (.keras or .h5 file); received {len(args)} arguments: {args}.")
    if not FLAGS.output:
        raise common.CLIError("pass --output OUT.onnx for the ONNX file to write.")
    data = None
    if FLAGS.data:
        data = common.load_npz(FLAGS.data, required=("x_test",))["x_test"]
    result = export_onnx(args[0], FLAGS.output, opset=FLAGS.opset, data=data, num_samples=FLAGS.onnx_samples)
    print(result.summary())
    if FLAGS.json:
        paths = {"onnx": result.path, "json": FLAGS.json}
        common.write_json(FLAGS.json, {"model": args[0], **result.to_dict(), "paths": paths})
    return 0
