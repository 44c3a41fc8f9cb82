"""`tfopt prune MODEL --data DATA.npz --output OUT.keras [--structure unstructured|2:4|channels]`: prune, fine-tune, report.

Fine-tunes on x_train / y_train and reports, on x_test / y_test, the accuracy
before and after, parameter counts and the measured sparsity of each kernel.
"""

from __future__ import annotations

import math
import os

import numpy as np
from absl import flags

from tfopt._cli import common, supervise, training
from tfopt._cli.common import CLIError

NAME = "prune"
HELP = "Prune a model (unstructured, 2:4 or whole channels), fine-tune it and report accuracy and sparsity."


def define_flags(fv: flags.FlagValues) -> None:
    common.define_training_flags(fv, epochs=2, batch_size=32, learning_rate=1e-3)
    training.define_progress_flags(fv)
    common.define_alias(fv, "prune_learning_rate", "learning_rate")
    flags.DEFINE_enum("structure", "unstructured", ["unstructured", "2:4", "channels"], "Pruning structure.",
                      flag_values=fv)
    flags.DEFINE_float("target_sparsity", 0.8, "Fraction of zeros per pruned kernel (unstructured), in [0, 1).",
                       flag_values=fv)
    common.define_range_validator(fv, "target_sparsity", 0, 1, high_open=True)
    flags.DEFINE_float("ratio", None, "Fraction of channels to remove (--structure channels), in (0, 1).",
                       flag_values=fv)
    common.define_range_validator(fv, "ratio", 0, 1, low_open=True, high_open=True)


def main(args: list[str], fv: flags.FlagValues) -> int:
    return supervise.run(NAME, args, fv, _work, outputs=(fv.output, fv.json), check=lambda: _check(args, fv))


def _check(args: list[str], fv: flags.FlagValues) -> None:
    if fv.structure == "channels" and fv.ratio is None:
        raise CLIError("--structure channels needs --ratio R (fraction of channels to remove).")
    training.check_call(args, fv, NAME)


def _work(args: list[str], fv: flags.FlagValues) -> int:
    if fv.structure == "channels" and fv.ratio is None:
        raise CLIError("--structure channels needs --ratio R (fraction of channels to remove).")
    run = training.training_run(args, fv, NAME)
    model, epochs, batch_size = run.model, run.epochs, run.batch_size
    x_train, y_train, x_test, y_test = run.x_train, run.y_train, run.x_test, run.y_test

    supervise.stage("evaluating the model", model=model)
    accuracy_before = training.keras_accuracy(model, x_test, y_test)
    steps = epochs * math.ceil(len(x_train) / batch_size)
    pruning = None
    if fv.structure == "channels":
        from tfopt.compress.channels import prune_channels

        result = prune_channels(model, ratio=fv.ratio, include=run.include, exclude=run.exclude)
        trainable = getattr(result, "model", result)
        skipped_channels = [
            {"name": name, "reason": reason} for name, reason in dict(getattr(result, "skipped_layers", {})).items()
        ]
    else:
        from tfopt.compress.prune import prune
        from tfopt.compress.schedules import ramp_end_step

        trainable = prune(
            model,
            target_sparsity=fv.target_sparsity,
            end_step=ramp_end_step(steps),
            include=run.include,
            exclude=run.exclude,
            m_by_n=(2, 4) if fv.structure == "2:4" else None,
        )
        pruning = trainable
    supervise.stage("preparing the model for pruning", model=model)
    keras = training.keras_of(trainable)
    trainable.compile(
        optimizer=keras.optimizers.Adam(fv.learning_rate),
        loss=training.classification_loss(keras, trainable, x_train[:64], y_train),
        metrics=["accuracy"],
    )
    training.fit(trainable, x_train, y_train, fv, epochs=epochs, batch_size=batch_size)
    if pruning is not None:
        from tfopt.compress.prune import pruning_summary, strip

        skipped = [s.__dict__ for s in pruning_summary(pruning).skipped]
        final = strip(pruning)
    else:
        skipped, final = skipped_channels, trainable
    supervise.stage("evaluating and saving the pruned model", model=final)
    accuracy_after = training.keras_accuracy(final, x_test, y_test)
    common.save_model(final, fv.output)

    result = {
        "model": os.path.abspath(args[0]),
        "structure": fv.structure,
        "target_sparsity": fv.target_sparsity if fv.structure == "unstructured" else None,
        "ratio": fv.ratio if fv.structure == "channels" else None,
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": fv.learning_rate,
        "accuracy_before": accuracy_before,
        "accuracy_after": accuracy_after,
        "params_before": int(model.count_params()),
        "params_after": int(final.count_params()),
        "nonzero_params_after": int(sum(np.count_nonzero(w) for w in final.get_weights())),
        "layers": _kernel_sparsity(final),
        "skipped": skipped,
        "paths": training.report_paths(fv),
    }
    if fv.json:
        common.write_json(fv.json, result)
    print(
        f"{fv.structure}: accuracy {accuracy_before:.4f} -> {accuracy_after:.4f}, params "
        f"{result['params_before']} -> {result['params_after']} ({result['nonzero_params_after']} non-zero)"
    )
    for layer in result["layers"]:
        print(f"  {layer['name']:<32} {layer['shape']!s:<20} sparsity {layer['sparsity']:.3f}")
    print(f"wrote {fv.output}" + (f" and {common.shown_path(fv.json)}" if fv.json else ""))
    return 0


def _kernel_sparsity(model) -> list[dict]:
    rows = []
    for layer in model.layers:
        for weight in layer.weights:
            if "kernel" in weight.name and len(weight.shape) >= 2:
                values = np.asarray(weight.numpy() if hasattr(weight, "numpy") else weight)
                rows.append(
                    {
                        "name": f"{layer.name}/{weight.name.split('/')[-1].split(':')[0]}",
                        "shape": list(values.shape),
                        "sparsity": float(np.mean(values == 0)),
                    }
                )
    return rows
