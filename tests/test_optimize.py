"""tfopt.optimize: Pareto front and constraints as pure functions, the report contract on real digits,
bad requests failing before any work, the caller's model and files untouched, recipes that replay."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

from tfopt.errors import InvalidArgumentError
from tfopt.measure.host import this_host
from tfopt.search import Constraints, optimize
from tfopt.search.constraints import violations
from tfopt.search.pareto import choose_best, dominates, pareto_front

REPORT_KEYS = {"baseline", "candidates", "best", "trials_completed", "trials_resumed"}
BASELINE_KEYS = {"accuracy", "size_bytes", "gzip_bytes", "latency_ms_median", "arena_bytes"}
CANDIDATE_KEYS = {
    "name", "recipe", "tflite", "accuracy", "size_bytes", "gzip_bytes", "latency_ms_median", "arena_bytes",
    "on_pareto_front", "meets_constraints",
}


# ---------------------------------------------------------------------------------------------- pure functions


def test_pareto_front_matches_brute_force_on_random_points():
    rng = np.random.default_rng(0)
    points = [tuple(p) for p in rng.integers(0, 6, size=(60, 3)).astype(float)]
    front = pareto_front(points)
    brute = [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]
    assert front == brute
    assert 0 < len(front) < len(points)
    for i in front:  # nothing on the front is beaten on every objective
        assert not any(all(q[k] <= points[i][k] for k in range(3)) and q != points[i] for q in points)


def test_pareto_front_drops_dominated_keeps_trade_offs():
    assert pareto_front([(0.0, 10.0), (0.5, 4.0), (0.6, 5.0), (2.0, 1.0)]) == [0, 1, 3]


def test_violations_in_points_and_kilobytes():
    row = {"drop": 0.015, "size_bytes": 3 * 1024, "latency_ms_median": 1.0, "arena_bytes": None}
    assert violations(row, Constraints(max_accuracy_drop=1.0)) == {"max_accuracy_drop": 0.5}
    assert violations(row, Constraints(max_accuracy_drop=2.0, max_size_kb=4)) == {}
    assert violations(row, Constraints(max_size_kb=2)) == {"max_size_kb": 1.0}
    assert violations(row, Constraints(max_metric_drop=0.01)) == {"max_metric_drop": 0.005}


def test_drop_bound_decided_at_the_stated_confidence():
    row = {"drop": 0.003, "drop_se": 0.002, "size_bytes": 1024}
    assert violations(row, Constraints(max_accuracy_drop=0.5)) == {}  # 0.3 pt measured, within 0.5 pt
    broken = violations(row, Constraints(max_accuracy_drop=0.5, confidence=0.9))  # 0.3 + 1.28 * 0.2 = 0.556 pt
    assert broken["max_accuracy_drop"] == pytest.approx(0.0563, abs=1e-3)
    assert violations({"drop": 0.003, "drop_se": 0.0001}, Constraints(max_accuracy_drop=0.5, confidence=0.9)) == {}
    with pytest.raises(InvalidArgumentError, match="confidence must be"):
        Constraints(max_accuracy_drop=0.5, confidence=0.3)


def test_paired_standard_error_counts_only_disagreements():
    from tfopt.search.constraints import chance_within, paired_drop

    rng = np.random.default_rng(0)
    base = (rng.random(1000) < 0.95).astype(float)
    same = base.copy()
    assert paired_drop(base, same, higher_better=True) == (0.0, 0.0)
    worse = base.copy()
    worse[np.flatnonzero(base)[:4]] = 0.0  # 4 of 1000 examples lost: a 0.4 pt drop
    value, se = paired_drop(base, worse, higher_better=True)
    assert value == pytest.approx(0.004)
    assert se == pytest.approx(np.sqrt((4 - 1000 * 0.004**2) / (1000 * 999)))  # ~0.2 pt, not the ~0.7 pt of one accuracy
    assert 0.5 < chance_within(value, se, 0.005) < 0.8
    errors = rng.random(50)
    assert paired_drop(errors, errors + 0.1, higher_better=False)[0] == pytest.approx(0.1)


def test_choose_best_smallest_feasible_else_nearest():
    rows = [
        {"name": "a", "drop": 0.000, "size": 100, "size_bytes": 100},
        {"name": "b", "drop": 0.008, "size": 30, "size_bytes": 30},
        {"name": "c", "drop": 0.030, "size": 10, "size_bytes": 10},
    ]
    assert choose_best(rows, Constraints(max_accuracy_drop=1.0), objective_key="size") == (1, None)
    assert choose_best(rows, Constraints(max_accuracy_drop=5.0), objective_key="size") == (2, None)
    best, nearest = choose_best(rows, Constraints(max_accuracy_drop=1.0, max_size_kb=0.005), objective_key="size")
    assert best is None and rows[nearest]["name"] == "c"  # the only bound broken is size; c breaks it least


# ------------------------------------------------------------------------------------- bad requests, no work


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"constraints": {"max_accuracy_drop": -1.0}}, "never negative"),
        ({"objective": "speed"}, "Unknown objective"),
        ({"constraints": Constraints(max_arena_kb=20)}, "target='micro'"),
        ({"objective": "arena"}, "target='micro'"),
        ({"objective": "flash"}, "target='micro'"),
        ({"constraints": {"max_flash_kb": 20}}, "target='micro'"),
        ({"metric": "mse", "constraints": {"max_accuracy_drop": 1.0}}, "max_metric_drop"),
        ({"level": 4}, "level must be one of"),
        ({"constraints": {"max_size": 3}}, "Unknown constraint"),
    ],
    ids=["negative-drop", "unknown-objective", "arena-bound-cpu", "arena-objective-cpu", "flash-objective-cpu",
         "flash-bound-cpu", "accuracy-on-mse", "level", "unknown-key"],
)
def test_bad_request_fails_before_any_work(tmp_path, kwargs, message):
    out = tmp_path / "never_created"
    with pytest.raises(InvalidArgumentError, match=message):
        optimize("no_such_model.keras", "no_such_data.npz", output_dir=out, **kwargs)
    assert not out.exists()


# ------------------------------------------------------------------------------ a real run on real digits


def _digits_model_and_npz(folder):
    import keras
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu", name="hidden"),
                              keras.layers.Dense(10, name="logits")])
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:1400], y[:1400], epochs=15, batch_size=64, verbose=0)
    npz = os.path.join(folder, "digits.npz")
    np.savez(npz, x_train=x[:1400], y_train=y[:1400], x_test=x[1400:], y_test=y[1400:])
    path = os.path.join(folder, "digits.keras")
    model.save(path)
    return model, path, npz


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits")
    return _digits_model_and_npz(str(folder))


@pytest.fixture(scope="module")
def level1(digits, tmp_path_factory):
    model, _, npz = digits
    before = [w.copy() for w in model.get_weights()]
    digest = hashlib.sha256(open(npz, "rb").read()).hexdigest()
    out = tmp_path_factory.mktemp("level1")
    result = optimize(model, npz, constraints=Constraints(max_accuracy_drop=1.0), level=1, output_dir=out,
                      max_trials=3, verbose=False)
    return result, str(out), before, digest


def test_level1_report_contract(level1, digits):
    result, out, _, _ = level1
    report = json.load(open(os.path.join(out, "report.json")))
    assert REPORT_KEYS <= set(report)
    assert BASELINE_KEYS <= set(report["baseline"])
    assert report["trials_completed"] == 3 == len(report["candidates"])
    assert report["trials_resumed"] == 0
    for c in report["candidates"]:
        assert CANDIDATE_KEYS <= set(c)
        assert os.path.isfile(c["tflite"])
        assert 0.0 <= c["accuracy"] <= 1.0
        assert c["recipe"][-1]["technique"] == "ptq"
    front = [c for c in report["candidates"] if c["on_pareto_front"]]
    assert front and all(os.path.isfile(os.path.join(out, "pareto", c["name"] + ".tflite")) for c in front)
    best = next(c for c in report["candidates"] if c["name"] == report["best"])
    assert best["meets_constraints"]
    assert 100 * (report["baseline"]["accuracy"] - best["accuracy"]) < 3.0  # test split; selection was on validation
    lines = [json.loads(l) for l in open(os.path.join(out, "trials.jsonl"))]
    assert len([l for l in lines if l["state"] == "COMPLETE"]) == 3
    assert os.path.getsize(os.path.join(out, "pareto.png")) > 5000
    markdown = open(os.path.join(out, "report.md")).read()
    assert "Pareto" in markdown
    assert result.best in result.summary()
    # every latency ratio names the machine it was timed on (one machine here: the report names it once)
    assert {c["host"] for c in report["candidates"]} == {report["baseline"]["host"]} == {this_host()}
    assert f"host: {this_host()}" in markdown
    # selection on half of x_test (no x_val in the file), every drop with its paired standard error
    selection = report["selection"]
    assert selection["source"] == "x_test" and "half of x_test" in selection["description"]
    assert selection["n_selection"] + selection["n_reporting"] == len(np.load(digits[2])["x_test"])
    for c in report["candidates"]:
        assert c["n_selection"] == selection["n_selection"] and c["n_reporting"] == selection["n_reporting"]
        assert c["drop_se"] is not None and c["drop_se"] >= 0 and c["test_drop_se"] >= 0
        assert 0.0 <= c["chance_within_bound"] <= 1.0
    assert "half of x_test" in markdown and "±" in result.summary()


def test_front_is_optunas_best_trials(level1):
    """The front in report.json is the front Optuna computes from the values it stores."""
    import optuna

    from tfopt.search.storage import open_storage

    result, out, _, _ = level1
    study = optuna.load_study(storage=open_storage(None, out), study_name="tfopt-optimize")
    assert study.metric_names == ["drop", "size_ratio"]
    number_of = {c["name"]: int(c["name"][1:4]) for c in result.candidates}
    assert {number_of[c["name"]] for c in result.pareto_front} == {t.number for t in study.best_trials}


def test_level1_reported_accuracy_is_the_tflite_on_litert(level1, digits):
    import tfopt

    from tfopt.search.inputs import split_data

    result, _, _, _ = level1
    parts, _ = split_data(digits[2])  # the reporting half of x_test, as optimize split it
    best = result.best_candidate
    measured = tfopt.evaluate(best["tflite"], (parts["x_test"], parts["y_test"]), metric="top1")
    assert measured.value == pytest.approx(best["accuracy"])
    assert best["size_bytes"] == os.path.getsize(best["tflite"])


def test_level1_leaves_model_and_data_file_unchanged(level1, digits):
    _, _, before, digest = level1
    model, _, npz = digits
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert hashlib.sha256(open(npz, "rb").read()).hexdigest() == digest


def test_recipe_replays_with_apply(level1, digits):
    import tfopt
    from tfopt.measure.evaluate import predict_tflite

    result, _, _, _ = level1
    model, _, npz = digits
    data = dict(np.load(npz))
    row = next(c for c in result.candidates if c["recipe"][-1].get("mode") == "float16")
    replay = tfopt.apply(model, *row["recipe"], data=data)
    assert len(bytes(replay.tflite)) == pytest.approx(row["size_bytes"], rel=0.01)
    x = data["x_test"][:100]
    replayed = predict_tflite(bytes(replay.tflite), [x])["predictions"][0]
    stored = predict_tflite(open(row["tflite"], "rb").read(), [x])["predictions"][0]
    assert np.array_equal(replayed, stored)


def test_cli_exit_3_when_nothing_meets_the_constraints(digits, tmp_path):
    from tfopt.cli import main

    _, path, npz = digits
    out = tmp_path / "tight"
    code = main(["optimize", path, "--data", npz, "--output", str(out), "--max_size_kb", "0.5", "--max_trials", "2"])
    assert code == 3
    report = json.load(open(out / "report.json"))
    assert report["best"] is None
    assert report["nearest"]["name"] in {c["name"] for c in report["candidates"]}
    assert "max_size_kb" in report["nearest"]["violated"]


def test_cli_rejects_arena_bound_on_cpu_before_work(digits, tmp_path):
    from tfopt.cli import main

    _, path, npz = digits
    out = tmp_path / "never"
    assert main(["optimize", path, "--data", npz, "--output", str(out), "--max_arena_kb", "10"]) == 2
    assert not out.exists()


def test_level2_trial_prunes_and_clusters_with_per_layer_targets(digits, tmp_path):
    model, _, npz = digits
    result = optimize(model, npz, constraints={"max_accuracy_drop": 2.0}, level=2, output_dir=tmp_path, max_trials=1,
                      verbose=False)
    (row,) = result.candidates
    techniques = [s["technique"] for s in row["recipe"]]
    assert techniques == ["prune", "fine_tune", "cluster", "fine_tune", "ptq"]
    targets = row["recipe"][0]["target_sparsity"]
    assert isinstance(targets, dict) and "hidden" in targets  # sensitivity-based, the big first layer included
    assert "hidden" in row["recipe"][2]["include"]  # clustered too: no blanket keep-the-first-layer rule
    assert row["gzip_bytes"] < 0.25 * result.baseline["gzip_bytes"]


def test_micro_arena_objective_runs_in_the_bound_on_tflite_micro(digits, tmp_path):
    from tflite_micro.python.tflite_micro import runtime

    model, _, npz = digits
    bound_kb = 16.0
    result = optimize(model, npz, constraints={"max_accuracy_drop": 2.0, "max_arena_kb": bound_kb}, objective="arena",
                      target="micro", level=1, output_dir=tmp_path, verbose=False)
    best = result.best_candidate
    assert best is not None and best["arena_bytes"] <= bound_kb * 1024
    assert all(c["arena_bytes"] for c in result.candidates)
    assert best["arena_bytes"] == min(c["arena_bytes"] for c in result.candidates if c["meets_constraints"])
    content = open(best["tflite"], "rb").read()
    interpreter = runtime.Interpreter.from_bytes(content, arena_size=int(bound_kb * 1024))
    x = np.load(npz)["x_test"][:20]
    detail = interpreter.get_input_details(0)
    scale, zero = detail["quantization_parameters"]["scales"][0], detail["quantization_parameters"]["zero_points"][0]
    hits = 0
    for row, label in zip(x, np.load(npz)["y_test"][:20]):
        interpreter.set_input(np.clip(np.round(row[None] / scale + zero), -128, 127).astype(np.int8), 0)
        interpreter.invoke()
        hits += int(np.argmax(interpreter.get_output(0)) == label)
    assert hits >= 17  # the int8 model still reads digits on the microcontroller runtime
    assert best["c_array"] and os.path.isfile(best["c_array"])


def test_micro_flash_objective_counts_the_compressed_flatbuffer(digits, tmp_path):
    """Every micro candidate carries the flash a device holds (export_micro's checked, compressed flatbuffer);
    the flash objective picks the smallest that meets the bounds."""
    from tfopt.export.micro import flash_bytes

    model, _, npz = digits
    result = optimize(model, npz, constraints={"max_accuracy_drop": 2.0, "max_flash_kb": 64}, objective="flash",
                      target="micro", level=1, output_dir=tmp_path, verbose=False)
    best = result.best_candidate
    assert best is not None and best["flash_bytes"] <= 64 * 1024
    for c in result.candidates:
        assert 0 < c["flash_bytes"] <= c["size_bytes"] + 64  # compression never grows a model (alignment aside)
        assert c["flash_bytes"] == flash_bytes(open(c["tflite"], "rb").read())
    assert best["flash_bytes"] == min(c["flash_bytes"] for c in result.candidates if c["meets_constraints"])
    report = json.load(open(tmp_path / "report.json"))
    assert report["hypervolume"]["history"] and "flash KB" in result.summary()


def test_report_names_each_machine_only_when_trials_ran_on_one():
    from types import SimpleNamespace

    from tfopt.search.result import _hosts

    one = SimpleNamespace(candidates=[{"host": "CPU A"}, {"host": "CPU A"}])
    two = SimpleNamespace(candidates=[{"host": "CPU A"}, {"host": "CPU B"}, {}])
    old = SimpleNamespace(candidates=[{}, {"host": None}])  # rows from a study written before hosts were recorded
    assert _hosts(one) == "host: CPU A"
    assert _hosts(two) == "on 2 machines, named per candidate in report.json"
    assert _hosts(old) == "host not recorded"


def test_level1_records_hypervolume_and_keeps_disk_small(level1):
    result, out, _, _ = level1
    report = json.load(open(os.path.join(out, "report.json")))
    history = [h["value"] for h in report["hypervolume"]["history"]]
    assert len(history) == report["trials_completed"]
    assert all(b >= a for a, b in zip(history, history[1:])) and history[-1] > 0
    assert os.path.getsize(os.path.join(out, "hypervolume.png")) > 3000
    # a conversion-only trial keeps its .tflite and nothing else; pareto/ links to it, no second copy
    assert not [f for f in os.listdir(os.path.join(out, "trials")) if f.endswith(".keras")]
    for c in result.pareto_front:
        original = os.path.join(out, "trials", c["name"] + ".tflite")
        assert os.path.samefile(c["tflite"], original)


@pytest.mark.parametrize("sampler, message", [("cmaes", "Unknown sampler"), ("gp", "PyTorch")], ids=["unknown", "gp-no-torch"])
def test_bad_sampler_fails_before_any_work(tmp_path, sampler, message):
    import importlib.util

    if sampler == "gp" and importlib.util.find_spec("torch") is not None:
        pytest.skip("PyTorch is installed: GPSampler runs")
    with pytest.raises(InvalidArgumentError, match=message):
        optimize("no_such_model.keras", "no_such_data.npz", output_dir=tmp_path / "x", sampler=sampler)
    assert not (tmp_path / "x").exists()


def test_sqlite_storage_and_refusal_to_resume_another_models_study(digits, tmp_path):
    import keras

    model, _, npz = digits
    url = f"sqlite:///{tmp_path / 'study.db'}"
    result = optimize(model, npz, level=1, output_dir=tmp_path / "a", storage=url, max_trials=1, verbose=False)
    assert result.trials_completed == 1 and os.path.getsize(tmp_path / "study.db") > 0
    other = keras.models.clone_model(model)  # same architecture, other weights: another model
    other.set_weights([w + 0.01 for w in model.get_weights()])
    with pytest.raises(InvalidArgumentError, match="another model or data"):
        optimize(other, npz, level=1, output_dir=tmp_path / "b", storage=url, max_trials=1, verbose=False)
    assert not (tmp_path / "b" / "report.json").exists()


def test_time_budget_stops_starting_trials(digits, tmp_path):
    model, _, npz = digits
    result = optimize(model, npz, level=1, output_dir=tmp_path / "t", time_budget_min=1e-4, verbose=False)
    assert result.trials_completed == 0 and result.best is None  # the budget ran out while measuring the baseline
    assert json.load(open(tmp_path / "t" / "report.json"))["trials_completed"] == 0


def test_optuna_dashboard_opens_the_study_with_the_same_front(level1):
    """`optuna-dashboard DIR/study.journal` (docs/optimize.md) shows the study: named values, tfopt's front."""
    import shutil
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    result, out, _, _ = level1
    binary = shutil.which("optuna-dashboard") or os.path.join(os.path.dirname(sys.executable), "optuna-dashboard")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([binary, os.path.join(out, "study.journal"), "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, study = time.time() + 60, None
        while study is None and time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/0?after=0", timeout=5) as answer:
                    study = json.load(answer)
            except OSError:
                assert server.poll() is None, "optuna-dashboard exited"
                time.sleep(0.5)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert study is not None, "optuna-dashboard did not answer within 60 s"
    assert study["name"] == "tfopt-optimize" and study["objective_names"] == ["drop", "size_ratio"]
    front = {int(c["name"][1:4]) for c in result.pareto_front}
    assert {t["number"] for t in study["best_trials"]} == front
