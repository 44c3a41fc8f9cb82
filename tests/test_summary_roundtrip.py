"""`tfopt.summary` answers the same for a model saved to .keras and loaded in a fresh process.

What pruning, clustering and QAT did (skipped layers and why, layers kept float,
rewrites) travels on the model (`tfopt.compress.records`), not in a table of the
process that made it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import tfopt

LOAD_AND_SUMMARIZE = """
import json, sys, warnings
warnings.simplefilter("ignore")
import tfopt
out = {}
for path in sys.argv[2:]:
    if sys.argv[1] == "tf_keras":
        model = tfopt.load_model(path)
    else:
        import keras
        model = keras.models.load_model(path)  # plain Keras: tfopt's layers registered by `import tfopt`
    out[path] = tfopt.summary(model).to_dict()
print(json.dumps(out, sort_keys=True, default=str))
"""


def _digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x.reshape(-1, 8, 8, 1) / 16.0).astype("float32"), y.astype("int32")


def _cnn(keras):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(16, activation="relu", name="hidden")(h)
    h = keras.layers.Dense(10, name="out")(h)
    return keras.Model(inputs, h)


def _fresh_process_summaries(paths: list[str], flavor: str) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", LOAD_AND_SUMMARIZE, flavor, *paths], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _stable(summary: dict) -> dict:
    """The parts a save cannot change (no step counters, no measured values that training moves)."""
    keep = {k: v for k, v in summary.items() if k in ("skipped", "kept_float", "rewrites", "quantized", "preserve")}
    if "layers" in summary:
        keep["layers"] = sorted(row["name"] for row in summary["layers"])
    return json.loads(json.dumps(keep, sort_keys=True, default=str))


TECHNIQUES = {
    # a rule that leaves "out" alone: its reason must survive the save
    "prune": lambda model: tfopt.prune(model, target_sparsity=0.5, exclude=["out"]),
    "cluster": lambda model: tfopt.cluster(model, num_clusters=4, exclude=["out"]),
    "qat": lambda model: tfopt.qat(model, exclude=["hidden"]),
}


def test_summary_roundtrip_keras3_fresh_process(tmp_path):
    import keras

    x, y = _digits()
    here, paths = {}, []
    for technique, make in sorted(TECHNIQUES.items()):
        made = make(_cnn(keras))
        made.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        made.fit(x[:256], y[:256], epochs=1, batch_size=64, verbose=0)
        path = str(tmp_path / f"{technique}.keras")
        made.save(path)
        here[path] = tfopt.summary(made).to_dict()
        reasons = [row["reason"] for row in here[path].get("skipped", here[path].get("kept_float", []))]
        assert reasons and not any("rebuilt from a loaded model" in r or r.startswith("not wrapped") for r in reasons)
        paths.append(path)
    # a QAT model with a rewrite (Conv + BatchNorm folded) that must survive too
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, use_bias=False, name="conv")(inputs)
    h = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn")(h))
    made = tfopt.qat(keras.Model(inputs, keras.layers.Dense(10, name="out")(keras.layers.Flatten()(h))))
    path = str(tmp_path / "qat_bn.keras")
    made.save(path)
    here[path] = tfopt.summary(made).to_dict()
    assert any("BatchNormalization folded" in r for r in here[path]["rewrites"])
    paths.append(path)

    there = _fresh_process_summaries(paths, "keras3")
    for path in paths:
        assert _stable(there[path]) == _stable(here[path]), path


@pytest.mark.parametrize("technique", ["prune", "cluster"])
def test_summary_roundtrip_tf_keras_still_answers(technique, tmp_path):
    tf_keras = pytest.importorskip("tf_keras")
    pytest.importorskip("tensorflow_model_optimization")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        made = TECHNIQUES[technique](_cnn(tf_keras))
    here = tfopt.summary(made).to_dict()
    assert "out" in [row["name"] for row in here["skipped"]]  # excluded; its reason lives on the model
    path = str(tmp_path / f"{technique}.keras")
    made.save(path)
    there = _fresh_process_summaries([path], "tf_keras")[path]
    assert sorted(row["name"] for row in there["layers"]) == sorted(row["name"] for row in here["layers"])
