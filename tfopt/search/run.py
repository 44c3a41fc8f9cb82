"""`optimize`: a trained model, data and constraints in; the Pareto front of measured .tflite models out."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import warnings
from typing import Any, Callable

from tfopt.errors import InvalidArgumentError
from tfopt.search import space
from tfopt.search import storage as store
from tfopt.search.constraints import check_request, metric_name
from tfopt.search.result import OptimizeResult, build_result, write_report
from tfopt.search.loop import SAMPLERS, Job, Runner, open_study, run_worker


def _positive(value, name: str, kind=int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) or value <= 0:
        raise InvalidArgumentError(f"{name} must be a positive {'number' if kind is float else 'integer'} or None. Received: {name}={value!r}.")


def optimize(
    model: Any,
    data: Any,
    *,
    constraints: Any = None,
    objective: str = "size",
    level: int = 1,
    target: str = "cpu",
    metric: str | Callable = "top1",
    output_dir: str | os.PathLike,
    max_trials: int | None = None,
    time_budget_min: float | None = None,
    storage: str | None = None,
    workers: int = 1,
    seed: int = 0,
    sampler: str = "tpe",
    verbose: bool = True,
) -> OptimizeResult:
    """Searches compression recipes for the smallest (fastest, leanest) model within your constraints.

    Use it when you know what you may lose ("at most half a point") and what
    you want ("as small as possible for this CPU / microcontroller"), not which
    techniques get there. Every trial applies a recipe (a list of tfopt configs:
    pruning, clustering, QAT, channel pruning, low-rank, fine-tunes, and a
    final conversion), converts it, and measures the .tflite on the runtime:
    the metric on LiteRT, file and gzip size, XNNPACK latency against the
    float32 baseline timed in the same trial, the TFLite Micro arena for
    `target="micro"`. Optuna proposes the trials (multi-objective TPE with
    constraints); its storage makes the run resumable (restart the same call
    after a crash: finished trials are not redone) and shareable by several
    processes or machines.

    Args:
        model: a trained Keras model, or a `.keras` / `.h5` path. Not modified.
        data: an `.npz` path or dict with `x_train`, `y_train`, `x_test`,
            `y_test` (and optionally `x_val`, `y_val`), a `tfopt.datasets.Dataset`,
            or `((x_train, y_train), (x_test, y_test))`. Selection never sees
            training data: it uses `x_val` when given (held out of training),
            else half of `x_test` (stratified, seeded), and the numbers reported
            come from the other half. Every drop carries its paired standard
            error; `Constraints(confidence=...)` says how sure a candidate must be.
        constraints: a `Constraints` or dict of bounds (`max_accuracy_drop` in
            points, `max_metric_drop`, `max_size_kb`, `max_latency_ms`,
            `max_arena_kb`). Defaults to `None` (unbounded).
        objective: what to minimize: `"size"` (gzip bytes), `"latency"`
            (ratio to float32), `"arena"` or `"flash"` (the flatbuffer with its weights
            compressed as TFLite Micro decodes them; both micro only). Defaults to `"size"`.
        level: `1` conversions only (minutes), `2` adds short fine-tunes
            (pruning, 2:4, clustering, QAT), `3` adds channel pruning, low-rank and
            distillation. Defaults to `1`.
        target: `"cpu"` (LiteRT, XNNPACK) or `"micro"` (int8 I/O, TFLite Micro
            arena, C arrays). Defaults to `"cpu"`.
        metric: `"top1"`, `"top5"`, `"mae"`, `"mse"` or a callable
            `(y_true, y_pred) -> float` (higher is better unless it has
            `lower_is_better = True`). Defaults to `"top1"`.
        output_dir: folder for trials.jsonl, report.json / .md, pareto.png, the
            study journal and the Pareto candidates' files.
        max_trials: trial budget shared by all workers. Defaults to `None`
            (level 1: every conversion; level 2: 10; level 3: 14).
        time_budget_min: stop starting trials after this many minutes.
            Defaults to `None`.
        storage: an Optuna storage URL (`sqlite:///x.db`, `postgresql://...`)
            shared by several machines. Defaults to `None`: `output_dir/study.journal`.
        workers: local processes sharing the study. Defaults to `1`.
        seed: seed of the selection split, sampler and training. Defaults to `0`.
        sampler: Optuna's sampler: `"tpe"` (multi-objective TPE), `"random"`,
            `"nsga2"` or `"gp"` (`GPSampler`, needs PyTorch). `bench/bench_optimize.py`
            compares them. Defaults to `"tpe"`.
        verbose: progress bar and one line per trial. Defaults to `True`.

    Returns:
        An `OptimizeResult` (`candidates`, `pareto_front`, `best`, `summary()`, `plot()`, `to_dict()`).

    Raises:
        tfopt.errors.InvalidArgumentError: bad constraints, objective, level, target or
            metric (before any work), or a storage that holds a study of another model.

    Example:

    ```python
    result = tfopt.optimize(model, "data.npz", constraints=tfopt.Constraints(max_accuracy_drop=1.0),
                            level=2, output_dir="opt")
    print(result.summary())
    ```
    """
    bounds = check_request(constraints, objective=objective, level=level, target=target, metric=metric)
    _positive(max_trials, "max_trials")
    _positive(time_budget_min, "time_budget_min", float)
    _positive(workers, "workers")
    if sampler not in SAMPLERS:
        raise InvalidArgumentError(f"Unknown sampler {sampler!r}. Expected one of {SAMPLERS}.")
    if sampler == "gp":
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            raise InvalidArgumentError("sampler='gp' (Optuna's GPSampler) needs PyTorch: pip install torch, or use 'tpe'.")
    if workers > 1 and not isinstance(metric, str):
        raise InvalidArgumentError("workers > 1 needs a metric by name (a callable cannot be sent to other processes).")
    from tfopt.search.inputs import (
        check_storage, describe_selection, fingerprint, load_model, memorised_validation, save_inputs, split_data,
    )

    start = time.time()
    say = print if verbose else (lambda *a, **k: None)
    output_dir = os.path.abspath(os.fspath(output_dir))
    check_storage(storage, output_dir)
    os.makedirs(output_dir, exist_ok=True)
    if storage is not None and (storage.endswith(".journal") or storage.startswith("journal:")):
        os.makedirs(os.path.dirname(os.path.abspath(storage.removeprefix("journal:"))), exist_ok=True)
    model = load_model(model)
    parts, selection = split_data(data, seed=seed)
    stamp = fingerprint(model, parts)
    budget = max_trials or space.default_trials(level, target)
    job = Job(
        output_dir=output_dir, level=level, objective=objective, target=target, metric=metric_name(metric),
        constraints=bounds.to_dict(), max_trials=budget, storage=storage, seed=seed, verbose=verbose,
        deadline=start + 60 * time_budget_min if time_budget_min else None, selection=selection, sampler=sampler,
    )
    study = _open(job)
    _check_same_study(study, stamp, say, constraints=job.constraints, level=level, objective=objective, target=target,
                      metric=job.metric, sampler=sampler)
    resumed = len(store.completed(study))
    for number, params in store.fail_orphans(study):
        study.enqueue_trial(params, user_attrs={store.RETRY_OF: number})
    for params in space.seeds(level, target, objective=objective):
        study.enqueue_trial(params, skip_if_exists=True)
    if resumed:
        say(f"[tfopt optimize] resuming: {resumed} finished trial(s) in the study are kept")
    inputs = save_inputs(model, parts, os.path.join(output_dir, "inputs")) if workers > 1 else {}
    say(f"[tfopt optimize] {describe_selection(selection)}; measuring the float32 baseline")
    runner = Runner(job, model, parts, metric=metric, say=say)
    if selection["source"] == "x_val" and re.fullmatch(r"top-?\d+", job.metric):  # proportions: a standard error applies
        message = memorised_validation(
            runner.baseline["val_metric"], runner.baseline["accuracy"], n_val=len(parts["x_val"]), n_test=len(parts["x_test"])
        )
        if message:
            warnings.warn(message, UserWarning, stacklevel=2)
    children = _spawn(job, workers - 1) if inputs else []
    progress = _progress(budget, resumed, verbose)
    try:
        run_worker(job, runner, study, progress=progress)
    finally:
        for child in children:
            child.wait()
        if progress is not None:
            progress.close()
    _wait_for_others(study, say)
    return _finish(study, runner, job, resumed)


def _open(job: Job):
    """The study, or one clear error naming the storage when what is there cannot be read."""
    from tfopt.search.storage import JOURNAL

    where = job.storage or os.path.join(job.output_dir, JOURNAL)
    try:
        return open_study(job, create=True)
    except Exception as err:  # noqa: BLE001 - whatever the storage's reader raised, the user's file is damaged
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else "no message"
        raise InvalidArgumentError(
            f"The study storage {where!r} could not be read ({type(err).__name__}: {first}); it looks damaged "
            "(a disk that filled up, a copy cut short, another program's file). Move it away to start a new study "
            "in this folder, or use a new --output folder; the finished trials' files in trials/ stay as they are."
        ) from None


def _wait_for_others(study, say, *, max_wait_s: float = 1800.0) -> None:
    """With a shared storage, other machines may still run trials of the budget: report them too."""
    from optuna.trial import TrialState

    deadline, shown = time.time() + max_wait_s, None
    while time.time() < deadline:
        running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        if not running:
            return
        if running != shown:
            say(f"[tfopt optimize] waiting for {running} trial(s) running in other processes ...")
            shown = running
        time.sleep(5)


def _check_same_study(study, stamp: str, say, *, constraints: dict[str, Any], **settings) -> None:
    """A resumed study must be of the same model, data and settings; new constraints re-judge it, with a notice.

    The level, objective, target and metric shape the search itself, so a
    change is refused. Constraints only judge finished trials: the run goes
    on under the new ones and says what changed.
    """
    attrs = study.user_attrs
    if not attrs:
        study.set_user_attr("fingerprint", stamp)
        study.set_user_attr("constraints", constraints)
        for key, value in settings.items():
            study.set_user_attr(key, value)
        return
    if attrs.get("fingerprint") != stamp:
        raise InvalidArgumentError(
            "The study in this output folder / storage was started with another model or data "
            f"(fingerprint {attrs.get('fingerprint')} vs {stamp}). Use a new --output folder or --storage, "
            "or move the old study.journal away."
        )
    changed = {k: (attrs[k], v) for k, v in settings.items() if k in attrs and attrs[k] != v}
    if changed:
        listed = "; ".join(f"{k}: {old} before, {new} now" for k, (old, new) in changed.items())
        raise InvalidArgumentError(
            f"The study here was started with other settings ({listed}). Resume with the same settings, "
            "or use a new output folder."
        )
    before = attrs.get("constraints")
    if before is not None and before != constraints:
        diff = ", ".join(
            f"{k} {_value(before.get(k))} -> {_value(v)}" for k, v in constraints.items() if before.get(k) != v
        )
        say(f"[tfopt optimize] the constraints changed since this study started ({diff}); finished trials are "
            "judged again under the new ones")
        study.set_user_attr("constraints", constraints)


def _value(value) -> str:
    return "none" if value is None else f"{value:g}"


def _spawn(job: Job, count: int) -> list:
    path = os.path.join(job.output_dir, "inputs", "job.json")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(job.to_json())
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    return [
        subprocess.Popen([sys.executable, "-m", "tfopt.search.loop", path, str(i + 1)], env=env)
        for i in range(count)
    ]


def _progress(total: int, done: int, verbose: bool):
    if not verbose:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=min(done, total), desc="optimize", unit="trial", dynamic_ncols=True)


def _finish(study, runner: Runner, job: Job, resumed: int) -> OptimizeResult:
    rows = []
    for trial in store.completed(study):
        row = dict(trial.user_attrs["row"])
        row.update(name=trial.user_attrs["name"], recipe=trial.user_attrs["recipe"], number=trial.number, params=dict(trial.params))
        rows.append(row)
    baseline = dict(runner.baseline)
    baseline["size_ratio"] = 1.0
    result = build_result(
        rows, baseline, constraints=runner.constraints, trials_completed=len(rows), trials_resumed=resumed,
        failed=store.failures(study),
        objective=job.objective, metric=job.metric, output_dir=job.output_dir, level=job.level, target=job.target,
        selection=job.selection,
    )
    write_report(result)
    if job.verbose:
        print()
        print(result.summary())
        print(f"\nwritten: {', '.join(result.paths.values())}")
    return result
