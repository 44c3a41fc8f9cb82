"""`tfopt profile MODEL [--batch_size N] [--json OUT.json]`: parameters, MACs, FLOPs and memory.

MODEL is a .keras / .h5 file or a .tflite flatbuffer. Prints the per-layer table
and totals; the JSON holds `params`, `macs`, `flops` totals and a `layers` list.
"""

from __future__ import annotations

import os

from absl import flags

from tfopt._cli import checks, common

NAME = "profile"
HELP = "Count parameters, MACs, FLOPs, weight bytes and activation memory per layer (.keras/.h5/.tflite)."


def define_flags(fv: flags.FlagValues) -> None:
    common.define_json_flag(fv)
    flags.DEFINE_integer("batch_size", 1, "Batch size the counts are for.", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("max_rows", 60, "Table rows to print (the costliest layers when the model is longer).",
                         lower_bound=1, flag_values=fv)
    common.define_alias(fv, "profile_rows", "max_rows")
    common.define_unsafe_flag(fv)


def main(args: list[str], fv: flags.FlagValues) -> int:
    from tfopt.analyze.profile import profile

    if len(args) != 1:
        raise common.CLIError(
            f"profile takes one MODEL path (.keras, .h5 or .tflite). Received {len(args)}: {' '.join(args) or 'none'}. "
            "Usage: tfopt profile MODEL [--batch_size N] [--json OUT.json]"
        )
    source = args[0]
    if not os.path.isfile(source):
        raise common.CLIError(f"model not found: {source!r}. Pass a .keras, .h5 or .tflite file.")
    checks.check_paths(inputs={"MODEL": source}, outputs={"--json": fv.json})
    if source.endswith(".tflite"):
        checks.check_tflite(source)  # a malformed flatbuffer is refused here, with one line
        model = source
    else:
        model = common.load_keras(source, unsafe=fv.unsafe)
    result = profile(model, batch_size=fv.batch_size)
    print(result.summary(max_rows=fv.max_rows))
    if fv.json:
        payload = {"model": os.path.abspath(source), **result.to_dict()}
        if fv.json != common.STDOUT:
            payload["paths"] = {"json": os.path.abspath(fv.json)}
        common.write_json(fv.json, payload)
        print(f"wrote {common.shown_path(fv.json)}")
    return 0
