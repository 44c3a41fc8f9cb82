"""`tfopt optimize MODEL --data DATA.npz --output DIR [...]`: constraint-driven search, Pareto front, best model.

Exit status: 0 with a best model, 3 when no candidate meets the constraints
(report.json names the nearest candidate and the bound it breaks), 2 for bad input, 4 when TensorFlow
crashed natively (a signal) twice in a row without the search moving on (`tfopt._cli.supervise`).
"""

from __future__ import annotations

from absl import flags

from tfopt._cli import checks, common, supervise
from tfopt._cli.common import CLIError

NAME = "optimize"
HELP = "search compression recipes within constraints; write the Pareto front, report.json/md, pareto.png"
NO_FEASIBLE_CANDIDATE = 3


def define_flags(fv: flags.FlagValues) -> None:
    """The optimize flags (`--data` and `--output` are shared with other commands when already defined)."""
    common.define_data_flag(fv, "An .npz file with x_train, y_train, x_test, y_test (x_val, y_val optional).")
    common.define_output_flag(fv, "Output folder (report, trials.jsonl, study journal, Pareto candidates).")
    flags.DEFINE_enum("level", "1", ["1", "2", "3"], "1: conversions only; 2: + short fine-tunes; 3: + channels, low-rank, distillation.", flag_values=fv)
    flags.DEFINE_enum("objective", "size", ["size", "latency", "arena", "flash"],
                      "What to minimize (arena and flash: --target micro).", flag_values=fv)
    flags.DEFINE_enum("metric", "top1", ["top1", "top5", "mae", "mse"], "Quality metric.", flag_values=fv)
    flags.DEFINE_float("max_accuracy_drop", None, "Allowed top-1/top-5 loss, in points.", flag_values=fv)
    flags.DEFINE_float("max_metric_drop", None, "Allowed metric loss in its units (increase for mae/mse).", flag_values=fv)
    flags.DEFINE_float("max_size_kb", None, "Bound on the .tflite size, KB.", flag_values=fv)
    flags.DEFINE_float("max_latency_ms", None, "Bound on the median XNNPACK latency, ms.", flag_values=fv)
    flags.DEFINE_float("max_arena_kb", None, "Bound on the TFLite Micro arena, KB (--target micro).", flag_values=fv)
    flags.DEFINE_float("max_flash_kb", None, "Bound on the flash the model takes on the device (compressed "
                       "weights), KB (--target micro).", flag_values=fv)
    flags.DEFINE_float("confidence", 0.5, "How sure selection must be that a drop is within its bound (0.5: the "
                       "measured drop; 0.9: 90% sure, from the drop's paired standard error).", flag_values=fv)
    flags.DEFINE_enum("target", "cpu", ["cpu", "micro"], "Deployment target.", flag_values=fv)
    flags.DEFINE_integer("max_trials", None, "Trial budget shared by all workers.", flag_values=fv)
    flags.DEFINE_float("time_budget_min", None, "Start no trial after this many minutes.", flag_values=fv)
    flags.DEFINE_string("storage", None, "Optuna storage URL shared by several machines (default: DIR/study.journal).", flag_values=fv)
    flags.DEFINE_integer("workers", 1, "Local worker processes on one study.", flag_values=fv)
    flags.DEFINE_enum("sampler", "tpe", ["tpe", "random", "nsga2", "gp"],
                      "Optuna's sampler (gp: GPSampler, needs PyTorch).", flag_values=fv)
    common.define_seed_flag(fv)


def main(args: list[str], fv: flags.FlagValues) -> int:
    """Checks the call, then runs the search in a supervised child (`supervise`): a native crash inside
    TensorFlow during a trial is retried with oneDNN off, and a trial whose process dies twice is recorded
    as failed while the search goes on (the study resumes where it was)."""
    return supervise.run(NAME, args, fv, _work, check=lambda: _check(args, fv), progress=_progress(fv))


def _check(args: list[str], fv: flags.FlagValues):
    from tfopt.search import Constraints
    from tfopt.search.constraints import check_request

    if len(args) != 1:
        raise CLIError(f"optimize takes one MODEL path; received {' '.join(args) or 'none'}. "
                       "Usage: tfopt optimize MODEL --data DATA.npz --output DIR")
    if not fv.data or not fv.output:
        raise CLIError("optimize needs --data DATA.npz and --output DIR.")
    constraints = Constraints(
        max_accuracy_drop=fv.max_accuracy_drop, max_metric_drop=fv.max_metric_drop, max_size_kb=fv.max_size_kb,
        max_latency_ms=fv.max_latency_ms, max_arena_kb=fv.max_arena_kb, max_flash_kb=fv.max_flash_kb,
        confidence=fv.confidence,
    )
    check_request(constraints, objective=fv.objective, level=int(fv.level), target=fv.target, metric=fv.metric)
    checks.check_paths(inputs={"MODEL": args[0], "--data": fv.data}, outputs={"--output": fv.output},
                       folder_outputs=("--output",))
    return constraints


def _work(args: list[str], fv: flags.FlagValues) -> int:
    from tfopt.search import optimize

    constraints = _check(args, fv)
    supervise.stage("running the search (a trial's training, conversion or measurement)")
    result = optimize(
        args[0], fv.data, constraints=constraints, objective=fv.objective, level=int(fv.level), target=fv.target,
        metric=fv.metric, output_dir=fv.output, max_trials=fv.max_trials, time_budget_min=fv.time_budget_min,
        storage=fv.storage, workers=fv.workers, seed=fv.seed, sampler=fv.sampler,
    )
    return 0 if result.best is not None else NO_FEASIBLE_CANDIDATE


def _progress(fv: flags.FlagValues):
    """What the study holds (each trial's state, the orphans and crashes it recorded): a crash that changed it
    moved the search on, and a restart resumes from there."""

    def token():
        import os

        from tfopt.search.storage import JOURNAL, STUDY_NAME, open_storage

        output = os.path.abspath(fv.output)
        if fv.storage is None and not os.path.exists(os.path.join(output, JOURNAL)):
            return None
        try:
            import optuna

            optuna.logging.set_verbosity(optuna.logging.ERROR)
            study = optuna.load_study(storage=open_storage(fv.storage, output), study_name=STUDY_NAME)
            trials = tuple((t.number, t.state.name) for t in study.get_trials(deepcopy=False))
            return trials, tuple(sorted(study.user_attrs))
        except Exception:  # noqa: BLE001 - no study yet, or one the child will report as damaged
            return None

    return token
