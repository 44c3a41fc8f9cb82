"""`tfopt decompose MODEL --data DATA.npz --output OUT.keras`: low-rank factorise, fine-tune, report.

Factorises Dense / Conv2D kernels by truncated SVD (one rule: --rank, --energy or
--param_ratio), fine-tunes on x_train / y_train with Adam, and reports accuracy
before / right after / after the fine-tune on x_test / y_test, parameter counts
and per-layer ranks.
"""

from __future__ import annotations

import os

from absl import flags

from tfopt._cli import common, supervise, training

NAME = "decompose"
HELP = "Factorise Dense/Conv2D kernels by SVD (--rank | --energy | --param_ratio), fine-tune, report accuracy."



def define_flags(fv: flags.FlagValues) -> None:
    common.define_training_flags(fv, epochs=5, batch_size=64, learning_rate=1e-4)
    training.define_progress_flags(fv)
    common.define_alias(fv, "decompose_learning_rate", "learning_rate")
    flags.DEFINE_integer("rank", None, "Same rank for every factorised layer.", lower_bound=1, flag_values=fv)
    flags.DEFINE_float("energy", None, "Per layer, keep this fraction of squared singular values, in (0, 1] "
                       "(default 0.9).", flag_values=fv)
    common.define_range_validator(fv, "energy", 0, 1, low_open=True)
    flags.DEFINE_float("param_ratio", None, "Whole-model target params_after / params_before, in (0, 1).",
                       flag_values=fv)
    common.define_range_validator(fv, "param_ratio", 0, 1, low_open=True, high_open=True)


def main(args: list[str], fv: flags.FlagValues) -> int:
    return supervise.run(NAME, args, fv, _work, outputs=(fv.output, fv.json), check=lambda: _check(args, fv))


def _check(args: list[str], fv: flags.FlagValues) -> None:
    _check_rule(fv)
    training.check_call(args, fv, NAME)


def _check_rule(fv: flags.FlagValues) -> None:
    given = [f"--{name}" for name in ("rank", "energy", "param_ratio") if fv[name].value is not None]
    if len(given) > 1:
        raise common.CLIError(f"pass one rule of --rank, --energy or --param_ratio; received {', '.join(given)}.")


def _work(args: list[str], fv: flags.FlagValues) -> int:
    from tfopt.compress.lowrank import decompose, plan_decomposition

    _check_rule(fv)
    run = training.training_run(args, fv, NAME)
    model, epochs, batch_size = run.model, run.epochs, run.batch_size
    x_train, y_train, x_test, y_test = run.x_train, run.y_train, run.x_test, run.y_test
    keras = training.keras_of(model)
    rule = dict(rank=fv.rank, energy=fv.energy, param_ratio=fv.param_ratio,
                include=run.include, exclude=run.exclude)

    supervise.stage("factorising the kernels", model=model)
    plan = plan_decomposition(model, **rule)
    small = decompose(model, **rule)
    accuracy_before = training.keras_accuracy(model, x_test, y_test)
    accuracy_decomposed = training.keras_accuracy(small, x_test, y_test)
    small.compile(optimizer=keras.optimizers.Adam(fv.learning_rate),
                  loss=training.classification_loss(keras, model, x_train[:64], y_train), metrics=["accuracy"])
    training.fit(small, x_train, y_train, fv, epochs=epochs, batch_size=batch_size)
    supervise.stage("evaluating and saving the factorised model", model=small)
    accuracy_after = training.keras_accuracy(small, x_test, y_test)
    common.save_model(small, fv.output)

    result = {
        "model": os.path.abspath(args[0]),
        "rule": plan.rule,
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": fv.learning_rate,
        "accuracy_before": accuracy_before,
        "accuracy_decomposed": accuracy_decomposed,
        "accuracy_after": accuracy_after,
        "params_before": int(model.count_params()),
        "params_after": int(small.count_params()),
        "param_ratio": small.count_params() / model.count_params(),
        "layers": [layer.to_dict() for layer in plan.layers],
        "paths": training.report_paths(fv),
    }
    if fv.json:
        common.write_json(fv.json, result)
    print(plan.summary())
    print(f"accuracy {accuracy_before:.4f} -> {accuracy_decomposed:.4f} (decomposed) -> {accuracy_after:.4f} "
          f"(after {epochs} epochs); params {result['params_before']:,} -> {result['params_after']:,} "
          f"({result['param_ratio']:.3f}x)")
    print(f"wrote {fv.output}" + (f" and {common.shown_path(fv.json)}" if fv.json else ""))
    return 0
