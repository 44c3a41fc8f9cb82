"""The search loop on Optuna: one study (embedded journal file or a database URL), ask/tell, resume, workers.

Each process runs `run_worker`: ask Optuna for a trial, turn its choices into
a recipe (`space`), run it (`recipe`), measure the .tflite (`trial`), tell
Optuna the validation drop and the objective (both minimized; constraints via
`constraints_func`), append a line to `trials.jsonl`. The storage hands every
enqueued or sampled trial to exactly one process; the budget counts finished
and running trials, so N processes split it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any, Callable

import numpy as np

from tfopt.search import space, storage
from tfopt.search.constraints import Constraints, allowed_drop, relative_violation, violations

OBJECTIVE_KEYS = {"size": "size_ratio", "latency": "latency_ratio", "arena": "arena_bytes", "flash": "flash_bytes"}


@dataclasses.dataclass
class Job:
    """Everything a worker needs (JSON-ready, so a child process can be given it)."""

    output_dir: str
    level: int
    objective: str
    target: str
    metric: Any
    constraints: dict[str, Any]
    max_trials: int
    deadline: float | None
    storage: str | None
    seed: int
    worker: int = 0
    verbose: bool = True
    selection: dict[str, Any] | None = None  # where selection data came from (search.inputs.split_data)
    sampler: str = "tpe"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))


SAMPLERS = ("tpe", "random", "nsga2", "gp")


def make_sampler(job: Job, num_seeds: int):
    """Optuna's sampler named by `job.sampler`, seeded per worker (the seeds run first in every case).

    Each trial's constraint is stored with `trial.set_constraint`, which Optuna's samplers read.
    """
    import optuna

    seed = job.seed + 7919 * job.worker
    if job.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if job.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if job.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=max(4, num_seeds))
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=max(4, num_seeds), multivariate=True, group=True,
    )


def open_study(job: Job, *, create: bool):
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    store = storage.open_storage(job.storage, job.output_dir)
    sampler = make_sampler(job, len(space.seeds(job.level, job.target, objective=job.objective)))
    if create:
        study = optuna.create_study(
            storage=store, study_name=storage.STUDY_NAME, directions=["minimize", "minimize"],
            sampler=sampler, load_if_exists=True,
        )
        # The two values every trial reports, named as in report.json (the dashboard shows these names).
        study.set_metric_names(["drop", OBJECTIVE_KEYS[job.objective]])
        return study
    return optuna.load_study(storage=store, study_name=storage.STUDY_NAME, sampler=sampler)


def objective_value(row: dict[str, Any], objective: str) -> float:
    value = row.get(OBJECTIVE_KEYS[objective])
    return float(value) if value is not None else 1e12


class Runner:
    """Runs trials in one process: model, data, teacher and the measurer loaded once."""

    def __init__(self, job: Job, model, data: dict[str, np.ndarray], *, metric=None, say: Callable = print) -> None:
        from tfopt.export.calibration import calibration_data
        from tfopt.export.convert import convert
        from tfopt.search.trial import Measurer

        self.job = job
        self.model = model
        self.data = data
        self.metric = metric if metric is not None else job.metric
        self.constraints = Constraints.from_dict(job.constraints)
        self.say = say
        self.classification = not isinstance(self.metric, str) or self.metric in ("top1", "top5")
        self.calibration = calibration_data(data["x_train"], model=model, num_samples=200, seed=job.seed)
        baseline = bytes(convert(model, mode="float32", check_delegation=False).tflite)
        self.measurer = Measurer(baseline, data, metric=self.metric, target=job.target)
        self.baseline = self.measurer.measure_baseline()
        self.baseline_tflite = baseline

    def row(self, measured: dict[str, Any]) -> dict[str, Any]:
        out = dict(measured)
        out["size_ratio"] = out["gzip_bytes"] / self.baseline["gzip_bytes"]
        return out

    def run_trial(self, params: dict[str, Any], number: int = 0) -> tuple[dict[str, Any], list[dict[str, Any]], Any, bytes]:
        import keras

        from tfopt.search.recipe import run_recipe

        keras.utils.set_random_seed(self.job.seed + number)

        recipe = space.build_recipe(
            params, self.job.level, classification=self.classification, num_train=len(self.data["x_train"])
        )
        keras_model, tflite, resolved = run_recipe(
            self.model, recipe, self.data, calibration=self.calibration, teacher=self.model,
            allowed_drop=allowed_drop(self.constraints),
        )
        return self.row(self.measurer.measure(tflite)), resolved, keras_model, tflite


def _save_artefacts(output_dir: str, name: str, keras_model, tflite: bytes, recipe: list[dict[str, Any]]) -> dict[str, str | None]:
    """The trial's .tflite, and its Keras model only when the recipe changed the weights (a conversion-only
    trial's Keras model is the user's own: saving it again would only fill the disk)."""
    from tfopt._io import atomic_write, save_keras_model

    folder = os.path.join(output_dir, "trials")
    os.makedirs(folder, exist_ok=True)
    paths: dict[str, str | None] = {"tflite": atomic_write(os.path.join(folder, f"{name}.tflite"), tflite), "keras": None}
    if all(step.get("technique") == "ptq" for step in recipe):
        return paths
    try:
        paths["keras"] = save_keras_model(keras_model, os.path.join(folder, f"{name}.keras"))
    except Exception:  # noqa: BLE001 - a QAT model in tf_keras may not save as .keras; the .tflite is the artefact
        paths["keras"] = None
    return paths


def _same_params(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a.keys() != b.keys():
        return False
    return all(
        (abs(float(a[k]) - float(b[k])) < 1e-9) if isinstance(a[k], float) else a[k] == b[k] for k in a
    )


def _line(trial_number: int, name: str, row: dict[str, Any], baseline: dict[str, Any], seconds: float, metric: str) -> str:
    pts = 100.0 if metric in ("top1", "top5") else 1.0
    value = f"{100 * row['accuracy']:.2f}%" if metric in ("top1", "top5") else f"{metric} {row['accuracy']:.4g}"
    arena = f", arena {row['arena_bytes'] / 1024:.1f} KB" if row.get("arena_bytes") else ""
    arena += f", flash {row['flash_bytes'] / 1024:.1f} KB" if row.get("flash_bytes") else ""
    return (
        f"trial {trial_number:3d} {name:<28} {value} (val drop {pts * row['drop']:+.2f}), "
        f"{row['gzip_bytes'] / 1024:.1f} KB gzip ({row['size_ratio']:.3f}x), latency {row['latency_ratio']:.2f}x{arena}  [{seconds:.0f} s]"
    )


def run_worker(job: Job, runner: Runner, study, *, progress=None) -> int:
    """Asks, runs and tells trials until the budget or the deadline; returns how many this process ran."""
    from optuna.trial import TrialState

    ran = duplicates = 0
    jsonl = os.path.join(job.output_dir, "trials.jsonl")
    while True:
        if job.deadline is not None and time.time() >= job.deadline:
            break
        for number, params in storage.fail_orphans(study):  # a worker on this host died mid-trial: run it again once
            study.enqueue_trial(params, user_attrs={storage.RETRY_OF: number})
        if storage.used_budget(study) >= job.max_trials:
            break
        trial = study.ask()
        for key, value in storage.me().items():
            trial.set_user_attr(key, value)
        params = space.suggest(trial, job.level, job.target, objective=job.objective)
        twin = next((t for t in storage.completed(study) if _same_params(t.params, params)), None)
        if twin is None:  # another worker took the same (enqueued) recipe a moment ago: the older trial runs it
            twin = next((t for t in storage.running(study) if t.number < trial.number and _same_params(t.params, params)), None)
        if twin is not None:
            trial.set_user_attr("duplicate_of", twin.number)
            trial.set_constraint("violation", float(twin.user_attrs.get("violation", 0.0)))
            study.tell(trial, state=TrialState.PRUNED)
            duplicates += 1
            if duplicates >= 10:
                break  # the sampler keeps proposing finished recipes: the space is exhausted
            continue
        duplicates = 0
        name = f"t{trial.number:03d}-{space.recipe_name(params)}"
        start = time.perf_counter()
        try:
            row, recipe, keras_model, tflite = runner.run_trial(params, trial.number)
        except Exception as err:  # noqa: BLE001 - a recipe that fails is recorded and the search goes on
            message = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
            trial.set_user_attr("error", message)
            study.tell(trial, state=TrialState.FAIL)
            storage.append_jsonl(
                jsonl, {"number": trial.number, "name": name, "params": params, "state": "FAIL", "error": message, **storage.me()}
            )
            runner.say(f"trial {trial.number:3d} {name} failed: {message}")
            ran += 1
            continue
        seconds = time.perf_counter() - start
        row["paths"] = _save_artefacts(job.output_dir, name, keras_model, tflite, recipe)
        broken = violations(row, runner.constraints)
        trial.set_user_attr("name", name)
        trial.set_user_attr("row", row)
        trial.set_user_attr("recipe", recipe)
        trial.set_user_attr("seconds", seconds)
        # Optuna's constraint: <= 0 when feasible; otherwise how far off, relative to the bounds.
        violation = relative_violation(row, runner.constraints) if broken else -1.0
        trial.set_user_attr("violation", violation)
        trial.set_constraint("violation", violation)
        study.tell(trial, [row["drop"], objective_value(row, job.objective)])
        storage.append_jsonl(jsonl, {
            "number": trial.number, "name": name, "params": params, "recipe": recipe, "state": "COMPLETE",
            "seconds": seconds, "violations": broken, **{k: v for k, v in row.items() if k != "paths"},
            "tflite": row["paths"]["tflite"], **storage.me(),
        })
        ran += 1
        line = _line(trial.number, name, row, runner.baseline, seconds, runner.job.metric if isinstance(runner.job.metric, str) else "custom")
        if progress is not None:
            progress.write(line)
            progress.update(1)
        elif job.verbose:
            print(f"[worker {job.worker}] {line}", flush=True)
    return ran


def worker_main(argv: list[str]) -> int:
    """`python -m tfopt.search.loop JOB.json`: one extra worker process on the shared study."""
    from tfopt.search.inputs import load_model

    with open(argv[0], encoding="utf-8") as handle:
        job = Job(**json.loads(handle.read()))
    job.worker = int(argv[1]) if len(argv) > 1 else job.worker
    inputs = os.path.join(job.output_dir, "inputs")
    model = load_model(os.path.join(inputs, "model.keras"))
    with np.load(os.path.join(inputs, "data.npz"), allow_pickle=False) as npz:
        data = {key: npz[key] for key in npz.files}
    study = open_study(job, create=False)
    runner = Runner(job, model, data, say=lambda *a: print(*a, flush=True))
    run_worker(job, runner, study)
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
