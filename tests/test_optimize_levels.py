"""optimize end to end at the levels and objectives that train: level 3 (size) and the latency objective,
on a tiny MLP trained on real digits (sklearn), two trials each."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tfopt.search import optimize, space

REPORT_KEYS = {"baseline", "candidates", "best", "trials_completed", "trials_resumed", "selection", "hypervolume"}
CANDIDATE_KEYS = {
    "name", "recipe", "tflite", "accuracy", "size_bytes", "gzip_bytes", "latency_ms_median", "latency_ratio",
    "size_ratio", "drop", "drop_se", "on_pareto_front", "meets_constraints",
}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A seeded 64-256-10 MLP trained on 1,400 real digits; the other 397 are the test data (no x_val)."""
    import keras
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(256, activation="relu", name="hidden"),
                              keras.layers.Dense(10, name="logits")])
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:1400], y[:1400], epochs=15, batch_size=64, verbose=0)
    npz = str(tmp_path_factory.mktemp("digits") / "digits.npz")
    np.savez(npz, x_train=x[:1400], y_train=y[:1400], x_test=x[1400:], y_test=y[1400:])
    return model, npz


def _report(out) -> dict:
    report = json.load(open(os.path.join(out, "report.json")))
    assert REPORT_KEYS <= set(report)
    for c in report["candidates"]:
        assert CANDIDATE_KEYS <= set(c), CANDIDATE_KEYS - set(c)
        assert os.path.isfile(c["tflite"]) and c["recipe"][-1]["technique"] == "ptq"
        assert c["latency_ratio"] > 0  # timed against the float32 baseline in the same trial
    return report


def _best(report) -> dict:
    assert report["best"] is not None
    best = next(c for c in report["candidates"] if c["name"] == report["best"])
    assert best["meets_constraints"]
    return best


@pytest.mark.slow
def test_level3_end_to_end_runs_the_deep_compression_seeds(digits, tmp_path):
    model, npz = digits
    result = optimize(model, npz, constraints={"max_accuracy_drop": 2.0}, level=3, output_dir=tmp_path, max_trials=2,
                      verbose=False)
    report = _report(tmp_path)
    assert report["trials_completed"] == 2 == len(result.candidates)
    expected = [space.recipe_name(seed) for seed in space.seeds(3, "cpu")[:2]]  # the seeds run first, in order
    assert [c["name"].split("-", 1)[1] for c in report["candidates"]] == expected
    for c in report["candidates"]:
        techniques = [s["technique"] for s in c["recipe"]]
        # channel pruning recovered by distillation; prune by weight share, 16 clusters, the last recovery decayed
        assert techniques[:3] == ["prune_channels", "distill", "prune"]
        assert isinstance(c["recipe"][2]["target_sparsity"], dict) and "cluster" in techniques
        rates = [s["learning_rate"] for s in c["recipe"] if s["technique"] in ("fine_tune", "distill")][-3:]
        assert rates == pytest.approx([space.LEARNING_RATES[3], space.LEARNING_RATES[3] / 3, space.LEARNING_RATES[3] / 10])
    best = _best(report)
    assert best["size_ratio"] < 0.1  # channels halved, ~90% of the rest pruned, 16 clusters, int8: >10x smaller (gzip)
    assert best["size_ratio"] == min(c["size_ratio"] for c in report["candidates"] if c["meets_constraints"])


def test_latency_objective_searches_structure_and_precision_not_sparsity(digits, tmp_path):
    import optuna

    from tfopt.search.storage import open_storage

    model, npz = digits
    optimize(model, npz, constraints={"max_accuracy_drop": 2.0}, objective="latency", level=2, output_dir=tmp_path,
             max_trials=2, verbose=False)
    report = _report(tmp_path)
    assert report["trials_completed"] == 2
    for c in report["candidates"]:
        techniques = [s["technique"] for s in c["recipe"]]
        assert "prune" not in techniques and "cluster" not in techniques  # no sparse kernels on x86: no latency to buy
        assert techniques[:2] == ["prune_channels", "fine_tune"]  # the seeds: channel pruning, then int8
        assert c["recipe"][-1]["mode"] == "int8"
    ratios = [c["recipe"][0]["ratio"] for c in report["candidates"]]
    assert ratios == [seed["channels"] for seed in space.seeds(2, "cpu", objective="latency")[:2]]
    best = _best(report)
    assert best["latency_ratio"] == min(c["latency_ratio"] for c in report["candidates"] if c["meets_constraints"])
    study = optuna.load_study(storage=open_storage(None, str(tmp_path)), study_name="tfopt-optimize")
    assert study.metric_names == ["drop", "latency_ratio"]
    assert {p for t in study.trials for p in t.params} <= {"ptq", "channels", "lowrank", "qat"}
