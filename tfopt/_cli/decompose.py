"""`tfopt decompose MODEL --data DATA.npz --output OUT.keras`: low-rank factorise, fine-tune, report.

Factorises Dense / Conv2D kernels by truncated SVD (one rule: --rank, --energy or
--param_ratio), fine-tunes on x_train / y_train with Adam, and reports accuracy
before / right after / after the fine-tune on x_test / y_test, parameter counts
and per-layer ranks.
"""

from __future__ import annotations

import os

from absl import flags

from tfopt import _keras
from tfopt._cli import common
from tfopt._cli.common import FLAGS

NAME = "decompose"
HELP = "Factorise Dense/Conv2D kernels by SVD (--rank | --energy | --param_ratio), fine-tune, report accuracy."

flags.DEFINE_integer("rank", None, "Same rank for every factorised layer.")
flags.DEFINE_float("energy", None, "Per layer, keep this fraction of squared singular values (default 0.9).")
flags.DEFINE_float("param_ratio", None, "Whole-model target params_after / params_before, in (0, 1).")
flags.DEFINE_float("decompose_learning_rate", 1e-4, "Adam learning rate for the fine-tune.")

DEFAULT_EPOCHS = 5
DEFAULT_BATCH_SIZE = 64


def main(args: list[str]) -> int:
    from tfopt.compress.lowrank import decompose, plan_decomposition

    run = common.training_run(args, "decompose", default_epochs=DEFAULT_EPOCHS, default_batch_size=DEFAULT_BATCH_SIZE)
    model, epochs, batch_size = run.model, run.epochs, run.batch_size
    x_train, y_train, x_test, y_test = run.x_train, run.y_train, run.x_test, run.y_test
    keras = _keras.keras_of(model)
    rule = dict(rank=FLAGS.rank, energy=FLAGS.energy, param_ratio=FLAGS.param_ratio,
                include=FLAGS.include, exclude=FLAGS.exclude)

    plan = plan_decomposition(model, **rule)
    small = decompose(model, **rule)
    accuracy_before = common.keras_accuracy(model, x_test, y_test)
    accuracy_decomposed = common.keras_accuracy(small, x_test, y_test)
    if epochs:
        small.compile(optimizer=keras.optimizers.Adam(FLAGS.decompose_learning_rate),
                      loss=common.classification_loss(keras, model, x_train[:64], y_train), metrics=["accuracy"])
        small.fit(x_train, y_train, epochs=epochs, batch_size=batch_size, verbose=0)
    accuracy_after = common.keras_accuracy(small, x_test, y_test)
    common.save_model(small, FLAGS.output)

    result = {
        "model": os.path.abspath(args[0]),
        "rule": plan.rule,
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": FLAGS.decompose_learning_rate,
        "accuracy_before": accuracy_before,
        "accuracy_decomposed": accuracy_decomposed,
        "accuracy_after": accuracy_after,
        "params_before": int(model.count_params()),
        "params_after": int(small.count_params()),
        "param_ratio": small.count_params() / model.count_params(),
        "layers": [layer.to_dict() for layer in plan.layers],
        "paths": {"output": os.path.abspath(FLAGS.output)},
    }
    if FLAGS.json:
        result["paths"]["json"] = os.path.abspath(FLAGS.json)
        common.write_json(FLAGS.json, result)
    print(plan.summary())
    print(f"accuracy {accuracy_before:.4f} -> {accuracy_decomposed:.4f} (decomposed) -> {accuracy_after:.4f} "
          f"(after {epochs} epochs); params {result['params_before']:,} -> {result['params_after']:,} "
          f"({result['param_ratio']:.3f}x)")
    print(f"wrote {FLAGS.output}" + (f" and {FLAGS.json}" if FLAGS.json else ""))
    return 0
