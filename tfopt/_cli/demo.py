"""`tfopt demo [--output DIR] [--dataset mnist5k|fashion_mnist|digits]`: the end-to-end demo."""

from __future__ import annotations

import dataclasses

from absl import flags

from tfopt._cli import checks, common
from tfopt._cli.common import CLIError

NAME = "demo"
HELP = "train a CNN on real data, convert it 4 ways, benchmark each on LiteRT, write report.md/json"


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("output", "tfopt_out", "The folder for the models and report.md / report.json.",
                        flag_values=fv)
    flags.DEFINE_string("dataset", "mnist5k", "Demo dataset: mnist5k, fashion_mnist or digits.", flag_values=fv)
    flags.DEFINE_integer("epochs", 6, "Training epochs (>= 1).", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("num_runs", 200, "Timed interpreter invocations per model.", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("max_test_examples", None, "Cap on test examples used for accuracy.", lower_bound=1,
                         flag_values=fv)
    common.define_seed_flag(fv)


def main(args: list[str], fv: flags.FlagValues) -> int:
    if args:
        raise CLIError(f"demo takes no positional arguments; received {' '.join(args)}. Usage: tfopt demo --output DIR")
    from tfopt.datasets import DATASETS
    from tfopt.demo import run_demo

    if fv.dataset not in DATASETS:
        raise CLIError(f"unknown --dataset {fv.dataset!r}; expected one of {', '.join(DATASETS)}.")
    output = fv.output or "tfopt_out"
    checks.check_paths(inputs={}, outputs={"--output": output}, folder_outputs=("--output",))
    result = run_demo(output, dataset=fv.dataset, epochs=fv.epochs, num_runs=fv.num_runs,
                      max_test_examples=fv.max_test_examples, seed=fv.seed)
    print()
    # The search printed its own table while it ran (run_demo is verbose here); print it once.
    print(dataclasses.replace(result, optimize=None).summary())
    return 0
