"""tfopt optimize as a process: killed with SIGKILL and restarted, it redoes no finished trial;
two workers on one embedded study split a fixed budget with no trial run twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import shuffled_mlp


def _make_inputs(folder):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    model, x, y = shuffled_mlp((x / 16.0).astype("float32"), y, n_train=1400, hidden=32, epochs=10, batch_size=64,
                               seed=1)
    path, npz = os.path.join(folder, "m.keras"), os.path.join(folder, "d.npz")
    model.save(path)
    np.savez(npz, x_train=x[:1400], y_train=y[:1400], x_test=x[1400:], y_test=y[1400:])
    return path, npz


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return _make_inputs(str(tmp_path_factory.mktemp("inputs")))


def _command(path, npz, out, *extra):
    return [sys.executable, "-m", "tfopt.cli", "optimize", path, "--data", npz, "--output", str(out),
            "--max_accuracy_drop", "2", *extra]


def _rows(out):
    path = os.path.join(out, "trials.jsonl")
    if not os.path.exists(path):
        return []
    rows = []
    for line in open(path):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return rows


def _env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")


def test_killed_run_resumes_without_redoing_finished_trials(inputs, tmp_path):
    path, npz = inputs
    out = tmp_path / "run"
    command = _command(path, npz, out, "--max_trials", "5")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    deadline = time.time() + 300
    while time.time() < deadline and len([r for r in _rows(out) if r["state"] == "COMPLETE"]) < 2:
        if process.poll() is not None:
            pytest.fail(f"optimize exited ({process.returncode}) before two trials finished")
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done_before = {r["number"] for r in _rows(out) if r["state"] == "COMPLETE"}
    assert len(done_before) >= 2
    assert not (out / "report.json").exists()

    finished = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    report = json.load(open(out / "report.json"))
    assert report["trials_resumed"] >= 2
    assert report["trials_resumed"] == len(done_before)
    assert report["best"] is not None
    complete = [r["number"] for r in _rows(out) if r["state"] == "COMPLETE"]
    states = [(r["number"], r["state"], r.get("error")) for r in _rows(out)]
    assert len(complete) == len(set(complete)) == report["trials_completed"] == 5, states  # nothing run twice
    recipes = [json.dumps(r["params"], sort_keys=True) for r in _rows(out) if r["state"] == "COMPLETE"]
    assert len(set(recipes)) == len(recipes)


def test_two_workers_split_the_budget_without_duplicates(inputs, tmp_path):
    path, npz = inputs
    out = tmp_path / "two"
    finished = subprocess.run(_command(path, npz, out, "--max_trials", "4", "--workers", "2"),
                              capture_output=True, text=True, env=_env(), timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    rows = [r for r in _rows(out) if r["state"] == "COMPLETE"]
    numbers = [r["number"] for r in rows]
    params = [json.dumps(r["params"], sort_keys=True) for r in rows]
    assert len(numbers) == len(set(numbers)) == 4
    assert len(set(params)) == 4
    report = json.load(open(out / "report.json"))
    assert report["trials_completed"] == 4
