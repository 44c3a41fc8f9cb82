"""Stored recipes carry each config's version and still load after a field is renamed or changes unit."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import tfopt
from tfopt import config as C

# A recipe as `trials.jsonl` / `report.json` store it today (field names of this release).
STORED_TODAY = """[
  {"technique": "prune", "version": 1, "target_sparsity": 0.5, "schedule": "polynomial", "begin_step": 0,
   "end_step": 20, "frequency": null, "include": ["a", "b"], "exclude": null, "m_by_n": null},
  {"technique": "fine_tune", "version": 1, "epochs": 1, "batch_size": 64, "learning_rate": 0.001},
  {"technique": "cluster", "version": 1, "num_clusters": 8, "init": "kmeans++", "per_channel": false,
   "preserve_sparsity": true, "include": ["a"], "exclude": null},
  {"technique": "ptq", "version": 2, "mode": "int8", "engine": "converter", "float_fallback": null,
   "max_accuracy_drop": 0.5, "per_channel_dense": true, "input_type": null, "output_type": null}
]"""


def _digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype("float32"), y.astype("int32")


def _mlp():
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((64,)), keras.layers.Dense(32, activation="relu", name="a"),
        keras.layers.Dense(32, activation="relu", name="b"), keras.layers.Dense(10, name="out"),
    ])


def test_recipe_versions_to_dict_carries_the_version():
    for klass in C.CONFIGS.values():
        assert klass().to_dict()["version"] == klass.version
    assert C.PTQConfig().to_dict()["version"] == 3  # 3: layer_precision (a version-2 step loads unchanged)


def test_recipe_versions_a_recipe_stored_today_loads_and_replays():
    steps = [C.Config.from_dict(step) for step in json.loads(STORED_TODAY)]
    assert [s.technique for s in steps] == ["prune", "fine_tune", "cluster", "ptq"]
    assert [C.Config.from_dict(s.to_dict()) for s in steps] == steps
    import keras

    x, y = _digits()
    model = _mlp()
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:1200], y[:1200], epochs=15, batch_size=64, verbose=0)
    result = tfopt.apply(model, *json.loads(STORED_TODAY), data=(x[:1200], y[:1200]))
    assert result.inspection.precision_counts.get("int8", 0) >= 3
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=result.tflite)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    hits = 0
    for row, label in zip(x[1200:1400], y[1200:1400]):
        interpreter.set_tensor(inp["index"], row[None])
        interpreter.invoke()
        hits += int(np.argmax(interpreter.get_tensor(out["index"])) == label)
    assert hits / 200 > 0.8  # pruned, clustered and converted as stored: still a digit classifier


def test_recipe_versions_a_renamed_field_still_loads(monkeypatch):
    # Today's ClusterConfig, as if a later release renamed num_clusters -> clusters.
    @dataclasses.dataclass(frozen=True)
    class RenamedCluster(C.Config):
        technique = "cluster"
        version = 2
        renamed = {"num_clusters": "clusters"}
        handler = C.ClusterConfig.handler
        clusters: int = 16
        include: object = None

    monkeypatch.setitem(C.CONFIGS, "cluster", RenamedCluster)
    stored = {"technique": "cluster", "version": 1, "num_clusters": 8, "include": ["a"]}
    assert C.Config.from_dict(stored) == RenamedCluster(clusters=8, include=("a",))
    with pytest.raises(ValueError, match="both 'num_clusters' and its new name 'clusters'"):
        C.Config.from_dict({**stored, "clusters": 4})


def test_recipe_versions_ptq_version_1_fraction_becomes_points():
    old = {"technique": "ptq", "mode": "int8", "float_fallback": "auto", "max_accuracy_drop": 0.005}  # no version: 1
    assert C.Config.from_dict(old).max_accuracy_drop == pytest.approx(0.5)
    assert C.Config.from_dict(C.PTQConfig(max_accuracy_drop=2.0).to_dict()).max_accuracy_drop == 2.0


def test_recipe_versions_a_newer_version_is_refused_with_a_fix():
    newer = C.PTQConfig.version + 1
    with pytest.raises(ValueError, match=f"version {newer}.*Upgrade tfopt"):
        C.Config.from_dict({"technique": "ptq", "version": newer})
