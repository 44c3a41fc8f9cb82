"""`tfopt export-micro MODEL.tflite --output DIR [--data DATA.npz] [--json OUT.json]`.

Runs the model in the TFLite Micro interpreter, then writes `<name>_model_data.cc/.h` and `<name>.tflite`
(the same bytes): weight tensors compressed where TFLite Micro's DECODE makes them smaller, and tfopt's own
arena plan when it measures smaller than TFLite Micro's (`--nocompress`, `--noplan_memory` turn them off).
Exit code 0 when TFLite Micro runs the model, 1 when it cannot (the unsupported
ops and their fixes are printed and in the JSON), 2 for a usage error.
"""

from __future__ import annotations

import os
import re

from absl import flags

from tfopt._cli import checks, common
from tfopt._cli.common import CLIError

NAME = "export-micro"
HELP = "check a .tflite on the TFLite Micro interpreter and write it as a C/C++ array"


def define_flags(fv: flags.FlagValues) -> None:
    common.define_output_flag(fv, "The folder for <name>_model_data.cc and .h (created when missing).")
    common.define_data_flag(fv, "An .npz whose x_test inputs are compared between TFLite Micro and LiteRT.")
    common.define_json_flag(fv)
    flags.DEFINE_string("name", None, "C name of the array (<name>_tflite). Default: from the model file name.",
                        flag_values=fv)
    common.define_alias(fv, "micro_name", "name")
    common.define_num_samples_flag(fv, 100, "Inputs from --data x_test compared between TFLite Micro and LiteRT.")
    common.define_alias(fv, "micro_samples", "num_samples")
    flags.DEFINE_boolean("write_unsupported", False, "Write the C files even when TFLite Micro cannot run the model.",
                         flag_values=fv)
    common.define_alias(fv, "micro_write_unsupported", "write_unsupported")
    flags.DEFINE_boolean("compress", True, "Store weight tensors as look-up-table indices where smaller (TFLite Micro "
                         "DECODE; the arena then holds the decoded tensors).", flag_values=fv)
    flags.DEFINE_boolean("plan_memory", True, "Write tfopt's operator order and arena plan when TFLite Micro measures it "
                         "smaller than its own.", flag_values=fv)


def default_name(path: str) -> str:
    """A C identifier from a file name: 'my-model.v2.tflite' -> 'my_model_v2'."""
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0]) or "model"
    return f"m_{stem}" if stem[0].isdigit() else stem


def main(args: list[str], fv: flags.FlagValues) -> int:
    from tfopt.export.micro import export_micro

    if len(args) != 1:
        raise CLIError(
            f"export-micro takes one MODEL.tflite path; received {args}. Usage: tfopt export-micro MODEL.tflite --output DIR"
        )
    if not fv.output:
        raise CLIError("pass --output DIR (the folder for <name>_model_data.cc and .h).")
    name = fv.name or default_name(args[0])
    if not re.fullmatch(r"[A-Za-z_]\w*", name):
        raise CLIError(f"--name {name!r} is not a C identifier (letters, digits, _; not starting with a digit).")
    checks.check_paths(
        inputs={"MODEL": args[0], "--data": fv.data},
        outputs={"--output": fv.output, "--json": fv.json,
                 "C source": os.path.join(fv.output, f"{name}_model_data.cc"),
                 "C header": os.path.join(fv.output, f"{name}_model_data.h"),
                 "model copy": os.path.join(fv.output, f"{name}.tflite")},
        folder_outputs=("--output",),
    )
    data = checks.load_npz(fv.data, required=("x_test",))["x_test"] if fv.data else None
    checks.check_tflite(args[0])
    if data is not None:
        checks.check_x(data, "x_test", fv.data)
    result = export_micro(args[0], fv.output, name=name, data=data, num_samples=fv.num_samples,
                          write_unsupported=fv.write_unsupported, compress=fv.compress,
                          plan_memory=fv.plan_memory)
    print(result.summary())
    if fv.json:
        common.write_json(fv.json, {"model": args[0], **result.to_dict()})
    return 0 if result.ok else 1
