"""`tfopt bench MODEL.tflite [MORE.tflite ...] [--data DATA.npz] [--threads 1,2] [--batch_sizes 1,8] [--json OUT.json]`.

- one model, one thread count, batch 1: latency, size, accuracy, XNNPACK coverage;
- `--threads 1,2` and / or `--batch_sizes 1,8`: also a sweep with throughput and peak memory;
- several models: one comparison table across them (ratios against the first);
- `--plot`: a PNG next to the --json file (or next to the first model): the sweep
  (latency / throughput against threads) or the comparison (size vs accuracy vs latency).
"""

from __future__ import annotations

import os

import numpy as np
from absl import flags

from tfopt._cli import checks, common
from tfopt._cli.common import CLIError

NAME = "bench"
HELP = "benchmark .tflite files on LiteRT (XNNPACK): latency, size, accuracy; thread / batch sweeps; comparisons"


def define_flags(fv: flags.FlagValues) -> None:
    common.define_data_flag(fv, "An .npz with x_test and y_test: also report the accuracy of the .tflite.")
    common.define_json_flag(fv)
    flags.DEFINE_list("threads", ["1"], "Interpreter threads; a list sweeps, e.g. --threads 1,2.", flag_values=fv)
    flags.DEFINE_list("batch_sizes", ["1"], "Batch sizes to sweep, e.g. 1,8 (throughput = batch / latency).",
                      flag_values=fv)
    flags.DEFINE_integer("num_runs", 100, "Timed invocations.", lower_bound=1, flag_values=fv)
    common.define_alias(fv, "runs", "num_runs")
    flags.DEFINE_integer("warmup_runs", 10, "Untimed invocations first.", lower_bound=0, flag_values=fv)
    flags.DEFINE_boolean("xnnpack", True, "Apply the XNNPACK delegate (--noxnnpack to turn it off).", flag_values=fv)
    flags.DEFINE_multi_string("input_shape", None, "NAME=1,224,224,3 for an input with dynamic dimensions.",
                              flag_values=fv)
    flags.DEFINE_boolean("plot", False, "Save a PNG of the sweep or comparison next to --json (or the model).",
                         flag_values=fv)


def _shapes(values: list[str] | None) -> dict[str, list[int]]:
    shapes = {}
    for value in values or []:
        name, sep, dims = value.rpartition("=")
        try:
            shape = [int(d) for d in dims.split(",")]
        except ValueError:
            shape = []
        if not shape or any(d < 1 for d in shape):
            raise CLIError(f"--input_shape {value!r} is not NAME=d0,d1,... with positive sizes; "
                           "e.g. --input_shape=input=1,224,224,3")
        shapes[name if sep else "0"] = shape
    return shapes


def int_list(label: str, value) -> list[int]:
    """'1,2' / ['1', '2'] / 2 -> [1, 2]; a CLIError for anything that is not positive integers."""
    items = [value] if isinstance(value, int) else value.split(",") if isinstance(value, str) else list(value)
    message = f"--{label} takes positive integers separated by commas, e.g. --{label} 1,2; received {value!r}."
    try:
        numbers = [int(str(v).strip()) for v in items if str(v).strip()]
    except ValueError as err:
        raise CLIError(message) from err
    if not numbers or any(n < 1 for n in numbers):
        raise CLIError(message)
    return numbers


def _plot_path(fv: flags.FlagValues, first_model: str, suffix: str) -> str:
    base = fv.json if fv.json and fv.json != common.STDOUT else first_model
    return os.path.splitext(base)[0] + suffix


def main(args: list[str], fv: flags.FlagValues) -> int:
    if not args:
        raise CLIError("bench takes one or more MODEL.tflite paths. Usage: tfopt bench MODEL.tflite [MORE.tflite ...]")
    threads, batches = int_list("threads", fv.threads), int_list("batch_sizes", fv.batch_sizes)
    shapes = _shapes(fv.input_shape)
    sweep = len(threads) > 1 or batches != [1]
    if len(args) > 1 and (shapes or sweep):
        raise CLIError("several models are compared at one setting; sweep --threads / --batch_sizes one model at a time.")
    if fv.plot and len(args) == 1 and not sweep:
        raise CLIError("--plot draws a sweep or a comparison: add --threads 1,2, --batch_sizes 1,8, or more models.")
    plot = _plot_path(fv, args[0], "_tradeoffs.png" if len(args) > 1 else "_sweep.png") if fv.plot else None
    inputs = {f"MODEL {path!r}": path for path in args}
    inputs["--data"] = fv.data
    checks.check_paths(inputs=inputs, outputs={"--json": fv.json, "--plot image": plot})
    arrays = checks.load_npz(fv.data, required=("x_test", "y_test")) if fv.data else None
    inspections = [checks.check_tflite(path) for path in args]
    data = _data(fv, arrays, inspections)

    from tfopt.measure.benchmark import benchmark
    from tfopt.measure.sweep import benchmark_sweep
    from tfopt.report import compare_variants, plot_tradeoffs

    payload: dict = {"models": list(args)}
    if len(args) > 1:
        report = compare_variants({os.path.basename(a): a for a in args}, data=data, num_threads=threads[0],
                                  num_runs=fv.num_runs, plot=False)
        print(report.summary())
        payload.update(report.to_dict())
        if plot:
            payload["plot"] = plot_tradeoffs(report, plot)
            print(f"plot: {payload['plot']}")
    else:
        result = benchmark(args[0], data=data, num_threads=threads[0], num_runs=fv.num_runs,
                           warmup_runs=fv.warmup_runs, use_xnnpack=fv.xnnpack, input_shapes=shapes)
        print(result.summary())
        payload = {"model": args[0], **result.to_dict()}
        if sweep:
            swept = benchmark_sweep(args[0], threads=threads, batch_sizes=batches, num_runs=fv.num_runs,
                                    warmup_runs=fv.warmup_runs, use_xnnpack=fv.xnnpack, input_shapes=shapes)
            print(swept.summary())
            payload["sweep"] = swept.to_dict()
            if plot:
                payload["plot"] = swept.plot(plot)
                print(f"plot: {payload['plot']}")
    if fv.json:
        common.write_json(fv.json, payload)
    return 0


def _data(fv: flags.FlagValues, arrays, inspections) -> tuple[np.ndarray, np.ndarray] | None:
    """x_test / y_test from --data, checked against every model's output size."""
    if arrays is None:
        return None
    x, y = np.asarray(arrays["x_test"]), np.asarray(arrays["y_test"])
    sizes = {checks.tflite_num_classes(inspection) for inspection in inspections}
    num_classes = sizes.pop() if len(sizes) == 1 else None
    checks.check_xy(x, y, x_name="x_test", y_name="y_test", source=fv.data, num_classes=num_classes)
    return x, y
