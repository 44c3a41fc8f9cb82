"""`tfopt distill TEACHER STUDENT --data DATA.npz --output OUT.keras [--epochs N] [--temperature T] [--alpha A]`."""

from __future__ import annotations

from absl import flags

from tfopt._cli import checks, common, supervise, training

NAME = "distill"
HELP = "Train STUDENT from a frozen TEACHER (knowledge distillation) and save the student."


def define_flags(fv: flags.FlagValues) -> None:
    common.define_training_flags(fv, epochs=5, batch_size=64, learning_rate=1e-3, layers=False)
    training.define_progress_flags(fv)
    common.define_alias(fv, "distill_learning_rate", "learning_rate")
    flags.DEFINE_float("temperature", 4.0, "Softening temperature T (> 0).", flag_values=fv)
    common.define_range_validator(fv, "temperature", 0, None, low_open=True)
    flags.DEFINE_float("alpha", 0.1, "Weight of the hard-label loss in [0, 1] (1 - alpha weighs distillation).",
                       flag_values=fv)
    common.define_range_validator(fv, "alpha", 0, 1)


def main(args: list[str], fv: flags.FlagValues) -> int:
    return supervise.run(NAME, args, fv, _work, outputs=(fv.output, fv.json), check=lambda: _check(args, fv))


def _check(args: list[str], fv: flags.FlagValues) -> dict:
    """The checks that need no TensorFlow; returns the data."""
    if len(args) != 2:
        raise common.CLIError(f"expected TEACHER and STUDENT model files; received {len(args)} arguments: {args}.")
    if not fv.output or not fv.output.endswith((".keras", ".h5")):
        raise common.CLIError(f"pass --output OUT.keras (or .h5) for the trained student. Received: --output={fv.output!r}.")
    checks.check_paths(inputs={"TEACHER": args[0], "STUDENT": args[1], "--data": fv.data},
                       outputs={"--output": fv.output, "--json": fv.json})
    for path in args:
        common.check_model_file(path, (".keras", ".h5", ".hdf5"))
    training.verbosity(fv)
    data = checks.load_npz(fv.data)
    training.check_data(data, fv.data)
    return data


def _work(args: list[str], fv: flags.FlagValues) -> int:
    from tfopt.compress.distill import distill

    data = _check(args, fv)
    supervise.stage("loading the models")
    teacher, student = (common.load_keras(path, unsafe=fv.unsafe) for path in args)
    training.allow_code_copies(student, fv)
    supervise.stage("checking the data against the models", model=[teacher, student])
    checks.check_model_data(teacher, data, fv.data)
    checks.check_model_data(student, data, fv.data)
    epochs = fv.epochs
    training.keras_of(student).utils.set_random_seed(fv.seed)
    before = training.keras_accuracy(student, data["x_test"], data["y_test"])
    distiller = distill(student, teacher, temperature=fv.temperature, alpha=fv.alpha)
    distiller.compile(optimizer=training.keras_of(student).optimizers.Adam(fv.learning_rate), metrics=["accuracy"])
    training.fit(distiller, data["x_train"], data["y_train"], fv, epochs=epochs, batch_size=fv.batch_size,
                 what="distilling")
    trained = distiller.student
    supervise.stage("saving and evaluating the student", model=trained)
    output = common.save_model(trained, fv.output)
    report = {
        "teacher": args[0],
        "student": args[1],
        "teacher_accuracy": training.keras_accuracy(teacher, data["x_test"], data["y_test"]),
        "student_accuracy_before": before,
        "student_accuracy_after": training.keras_accuracy(trained, data["x_test"], data["y_test"]),
        "teacher_params": int(teacher.count_params()),
        "student_params": int(trained.count_params()),
        "epochs": epochs,
        "temperature": fv.temperature,
        "alpha": fv.alpha,
        "learning_rate": fv.learning_rate,
        "teacher_outputs": distiller.teacher_outputs,
        "student_outputs": distiller.student_outputs,
        "paths": {"model": output, "json": fv.json},
    }
    print(
        f"teacher {report['teacher_accuracy']:.4f} ({report['teacher_params']:,} params); student "
        f"{report['student_accuracy_before']:.4f} -> {report['student_accuracy_after']:.4f} "
        f"({report['student_params']:,} params); wrote {output}"
    )
    if fv.json:
        common.write_json(fv.json, report)
    return 0
