"""`tfopt bench MODEL.tflite [--data DATA.npz] [--threads N] [--json OUT.json]`."""

from __future__ import annotations

from absl import flags

from tfopt._cli.common import FLAGS, CLIError, load_npz, write_json

NAME = "bench"
HELP = "benchmark a .tflite on LiteRT (XNNPACK): latency, size, accuracy on --data"

flags.DEFINE_integer("runs", 100, "Timed invocations.")
flags.DEFINE_integer("warmup_runs", 10, "Untimed invocations first.")
flags.DEFINE_boolean("xnnpack", True, "Apply the XNNPACK delegate (--noxnnpack to turn it off).")
flags.DEFINE_multi_string("input_shape", None, "NAME=1,224,224,3 for an input with dynamic dimensions.")


def _shapes(values: list[str] | None) -> dict[str, list[int]]:
    shapes = {}
    for value in values or []:
        name, sep, dims = value.rpartition("=")
        try:
            shapes[name if sep else "0"] = [int(d) for d in dims.split(",")]
        except ValueError as err:
            raise CLIError(f"--input_shape {value!r} is not NAME=d0,d1,...; e.g. --input_shape=input=1,224,224,3") from err
    return shapes


def main(args: list[str]) -> int:
    from tfopt.deploy.benchmark import benchmark

    if len(args) != 1:
        raise CLIError(f"bench takes one MODEL.tflite path; received {args}. Usage: tfopt bench MODEL.tflite")
    data = None
    if FLAGS.data:
        arrays = load_npz(FLAGS.data, required=("x_test", "y_test"))
        data = (arrays["x_test"], arrays["y_test"])
    result = benchmark(
        args[0],
        data=data,
        num_threads=FLAGS.threads,
        num_runs=FLAGS.runs,
        warmup_runs=FLAGS.warmup_runs,
        use_xnnpack=FLAGS.xnnpack,
        input_shapes=_shapes(FLAGS.input_shape),
    )
    print(result.summary())
    if FLAGS.json:
        write_json(FLAGS.json, {"model": args[0], **result.to_dict()})
    return 0
