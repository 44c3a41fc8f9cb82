"""`tfopt bench`: benchmark .tflite files on LiteRT; sweeps, several models, plots.

`tfopt bench MODEL.tflite [MORE.tflite ...] [--data DATA.npz] [--threads 1,2] [--batch_sizes 1,8]
[--input_shape NAME=1,224,224,3] [--plot] [--json OUT.json]`

- one model, one thread count, batch 1: as before (latency, size, accuracy, XNNPACK coverage);
- `--threads 1,2` and / or `--batch_sizes 1,8`: also a sweep with throughput and peak memory;
- several models: one comparison table across them (ratios against the first);
- `--plot`: a PNG next to the --json file (or next to the first model): the sweep
  (latency / throughput against threads) or the comparison (size vs accuracy vs latency).
"""

from __future__ import annotations

import os

from absl import flags

from tfopt._cli.common import FLAGS, CLIError, load_npz, write_json

NAME = "bench"
HELP = "benchmark .tflite files on LiteRT (XNNPACK): latency, size, accuracy; thread / batch sweeps; comparisons"

flags.DEFINE_integer("runs", 100, "Timed invocations.")
flags.DEFINE_integer("warmup_runs", 10, "Untimed invocations first.")
flags.DEFINE_boolean(
    "xnnpack", True, "Apply the XNNPACK delegate (--noxnnpack to turn it off)."
)
flags.DEFINE_multi_string(
    "input_shape", None, "NAME=1,224,224,3 for an input with dynamic dimensions."
)
flags.DEFINE_list(
    "batch_sizes",
    ["1"],
    "Batch sizes to sweep, e.g. 1,8 (throughput = batch / latency).",
)
flags.DEFINE_boolean(
    "plot",
    False,
    "Save a PNG of the sweep or comparison next to --json (or the model).",
)


def _shapes(values: list[str] | None) -> dict[str, list[int]]:
    shapes = {}
    for value in values or []:
        name, sep, dims = value.rpartition("=")
        try:
            shapes[name if sep else "0"] = [int(d) for d in dims.split(",")]
        except ValueError as err:
            raise CLIError(
                f"--input_shape {value!r} is not NAME=d0,d1,...; e.g. --input_shape=input=1,224,224,3"
            ) from err
    return shapes


def int_list(label: str, value) -> list[int]:
    """'1,2' / ['1', '2'] / 2 -> [1, 2]; a CLIError for anything that is not positive integers."""
    items = (
        [value]
        if isinstance(value, int)
        else value.split(",")
        if isinstance(value, str)
        else list(value)
    )
    try:
        numbers = [int(str(v).strip()) for v in items if str(v).strip()]
    except ValueError as err:
        raise CLIError(
            f"--{label} takes positive integers separated by commas, e.g. --{label} 1,2; received {value!r}."
        ) from err
    if not numbers or any(n < 1 for n in numbers):
        raise CLIError(
            f"--{label} takes positive integers separated by commas, e.g. --{label} 1,2; received {value!r}."
        )
    return numbers


def thread_counts() -> list[int]:
    """FLAGS.threads as a list (works with the integer flag and with the proposed list flag)."""
    return int_list("threads", FLAGS.threads)


def _plot_path(first_model: str, suffix: str) -> str:
    base = FLAGS.json if FLAGS.json else first_model
    return os.path.splitext(base)[0] + suffix


def main(args: list[str]) -> int:
    from tfopt.measure.benchmark import benchmark
    from tfopt.measure.sweep import benchmark_sweep
    from tfopt.report import compare_variants, plot_tradeoffs

    if not args:
        raise CLIError(
            "bench takes one or more MODEL.tflite paths. Usage: tfopt bench MODEL.tflite [MORE.tflite ...]"
        )
    threads, batches = thread_counts(), int_list("batch_sizes", FLAGS.batch_sizes)
    shapes = _shapes(FLAGS.input_shape)
    data = None
    if FLAGS.data:
        arrays = load_npz(FLAGS.data, required=("x_test", "y_test"))
        data = (arrays["x_test"], arrays["y_test"])
    payload: dict = {"models": list(args)}
    if len(args) > 1:
        if shapes or len(threads) > 1 or batches != [1]:
            raise CLIError(
                "several models are compared at one setting; sweep --threads / --batch_sizes one model at a time."
            )
        report = compare_variants(
            {os.path.basename(a): a for a in args},
            data=data,
            num_threads=threads[0],
            num_runs=FLAGS.runs,
            plot=False,
        )
        print(report.summary())
        payload.update(report.to_dict())
        if FLAGS.plot:
            payload["plot"] = plot_tradeoffs(
                report, _plot_path(args[0], "_tradeoffs.png")
            )
            print(f"plot: {payload['plot']}")
    else:
        result = benchmark(
            args[0],
            data=data,
            num_threads=threads[0],
            num_runs=FLAGS.runs,
            warmup_runs=FLAGS.warmup_runs,
            use_xnnpack=FLAGS.xnnpack,
            input_shapes=shapes,
        )
        print(result.summary())
        payload = {"model": args[0], **result.to_dict()}
        if len(threads) > 1 or batches != [1]:
            sweep = benchmark_sweep(
                args[0],
                threads=threads,
                batch_sizes=batches,
                num_runs=FLAGS.runs,
                warmup_runs=FLAGS.warmup_runs,
                use_xnnpack=FLAGS.xnnpack,
                input_shapes=shapes,
            )
            print(sweep.summary())
            payload["sweep"] = sweep.to_dict()
            if FLAGS.plot:
                payload["plot"] = sweep.plot(_plot_path(args[0], "_sweep.png"))
                print(f"plot: {payload['plot']}")
        elif FLAGS.plot:
            raise CLIError(
                "--plot draws a sweep or a comparison: add --threads 1,2, --batch_sizes 1,8, or more models."
            )
    if FLAGS.json:
        write_json(FLAGS.json, payload)
    return 0
