"""`tfopt profile MODEL [--batch_size N] [--json OUT.json]`: parameters, MACs, FLOPs and memory.

MODEL is a .keras / .h5 file or a .tflite flatbuffer. Prints the per-layer table
and totals; the JSON holds `params`, `macs`, `flops` totals and a `layers` list.
"""

from __future__ import annotations

import os

from absl import flags

from tfopt._cli import common
from tfopt._cli.common import FLAGS

NAME = "profile"
HELP = "Count parameters, MACs, FLOPs, weight bytes and activation memory per layer (.keras/.h5/.tflite)."

flags.DEFINE_integer("profile_rows", 60, "Table rows to print (the costliest layers when the model is longer).")


def main(args: list[str]) -> int:
    from tfopt import _keras
    from tfopt.analyze.profile import profile

    if len(args) != 1:
        raise common.CLIError(
            f"profile takes one MODEL path (.keras, .h5 or .tflite). Received: {args!r}. "
            "Usage: tfopt profile MODEL [--batch_size N] [--json OUT.json]"
        )
    source = args[0]
    if not os.path.isfile(source):
        raise common.CLIError(f"model not found: {source!r}. Pass a .keras, .h5 or .tflite file.")
    batch_size = FLAGS.batch_size if FLAGS.batch_size is not None else 1
    if batch_size < 1:
        raise common.CLIError(f"--batch_size must be >= 1. Received: {batch_size}.")
    model = source if source.endswith(".tflite") else _keras.load_model(source)
    result = profile(model, batch_size=batch_size)
    print(result.summary(max_rows=FLAGS.profile_rows))
    if FLAGS.json:
        payload = {"model": os.path.abspath(source), **result.to_dict()}
        payload["paths"] = {"json": os.path.abspath(FLAGS.json)}
        common.write_json(FLAGS.json, payload)
        print(f"wrote {FLAGS.json}")
    return 0
