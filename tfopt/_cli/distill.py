"""`tfopt distill TEACHER STUDENT --data DATA.npz --output OUT.keras [--epochs N] [--temperature T] [--alpha A]`."""

from __future__ import annotations


from absl import flags

from tfopt._cli import common
from tfopt._cli.common import FLAGS

NAME = "distill"
HELP = "Train STUDENT from a frozen TEACHER (knowledge distillation) and save the student."

flags.DEFINE_float("temperature", 4.0, "distill: softening temperature T.")
flags.DEFINE_float("alpha", 0.1, "distill: weight of the hard-label loss (1 - alpha weighs distillation).")
flags.DEFINE_float("distill_learning_rate", 1e-3, "distill: Adam learning rate.")

_DEFAULT_EPOCHS = 5
_DEFAULT_BATCH = 64






def main(args: list[str]) -> int:
    import keras

    from tfopt._keras import keras_of, load_model
    from tfopt.compress.distill import distill

    if len(args) != 2:
        raise common.CLIError(f"expected TEACHER and STUDENT model files; received {len(args)} arguments: {args}.")
    if not FLAGS.output:
        raise common.CLIError("pass --output OUT.keras for the trained student.")
    data = common.load_npz(FLAGS.data)
    teacher, student = load_model(args[0]), load_model(args[1])
    epochs = FLAGS.epochs or _DEFAULT_EPOCHS
    keras.utils.set_random_seed(FLAGS.seed)
    before = common.keras_accuracy(student, data["x_test"], data["y_test"])
    distiller = distill(student, teacher, temperature=FLAGS.temperature, alpha=FLAGS.alpha)
    distiller.compile(optimizer=keras_of(student).optimizers.Adam(FLAGS.distill_learning_rate), metrics=["accuracy"])
    distiller.fit(
        data["x_train"], data["y_train"], epochs=epochs, batch_size=FLAGS.batch_size or _DEFAULT_BATCH, verbose=2
    )
    trained = distiller.student
    output = common.save_model(trained, FLAGS.output)
    report = {
        "teacher": args[0],
        "student": args[1],
        "teacher_accuracy": common.keras_accuracy(teacher, data["x_test"], data["y_test"]),
        "student_accuracy_before": before,
        "student_accuracy_after": common.keras_accuracy(trained, data["x_test"], data["y_test"]),
        "teacher_params": int(teacher.count_params()),
        "student_params": int(trained.count_params()),
        "epochs": epochs,
        "temperature": FLAGS.temperature,
        "alpha": FLAGS.alpha,
        "teacher_outputs": distiller.teacher_outputs,
        "student_outputs": distiller.student_outputs,
        "paths": {"model": output, "json": FLAGS.json},
    }
    print(
        f"teacher {report['teacher_accuracy']:.4f} ({report['teacher_params']:,} params); student "
        f"{report['student_accuracy_before']:.4f} -> {report['student_accuracy_after']:.4f} "
        f"({report['student_params']:,} params); wrote {output}"
    )
    if FLAGS.json:
        common.write_json(FLAGS.json, report)
    return 0
