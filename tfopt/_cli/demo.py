"""`tfopt demo --output DIR [--dataset mnist5k|fashion_mnist|digits]`: the end-to-end demo."""

from __future__ import annotations

from absl import flags

from tfopt._cli.common import FLAGS, CLIError

NAME = "demo"
HELP = "train a CNN on real data, convert it 4 ways, benchmark each on LiteRT, write report.md/json"

flags.DEFINE_string("dataset", "mnist5k", "Demo dataset: mnist5k, fashion_mnist or digits.")
flags.DEFINE_integer("num_runs", 200, "Timed interpreter invocations per model.")
flags.DEFINE_integer("max_test_examples", None, "Cap on test examples used for accuracy.")


def main(args: list[str]) -> int:
    if args:
        raise CLIError(f"demo takes no positional arguments; received {args}. Usage: tfopt demo --output DIR")
    from tfopt.datasets import DATASETS
    from tfopt.demo import run_demo

    if FLAGS.dataset not in DATASETS:
        raise CLIError(f"unknown --dataset {FLAGS.dataset!r}; expected one of {DATASETS}.")
    result = run_demo(
        FLAGS.output or "tfopt_out",
        dataset=FLAGS.dataset,
        epochs=FLAGS.epochs or 6,
        num_runs=FLAGS.num_runs,
        max_test_examples=FLAGS.max_test_examples,
        seed=FLAGS.seed,
    )
    print()
    print(result.summary())
    return 0
