"""`tfopt optimize` survives a native crash inside TensorFlow during a trial (tfopt._cli.supervise).

The model holds a registered custom layer (from a `sitecustomize` module on the child's PYTHONPATH) whose
training step kills its own process with SIGSEGV, from a `tf.py_function`, the first two times any process
trains it: the first trial dies (oneDNN on), the command retries with oneDNN off, the next trial dies too,
and the search goes on with the rest. Both dead trials are in report.json with the signal.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals")]

SITECUSTOMIZE = '''
import os

if os.environ.get("CRASH_LAYER"):
    import keras
    import tensorflow as tf

    def _maybe_die():
        path = os.environ.get("CRASH_TEST")
        if path:
            count = int(open(path).read() or 0) if os.path.exists(path) else 0
            if count < 2:
                with open(path, "w") as handle:
                    handle.write(str(count + 1))
                os.kill(os.getpid(), 11)
        return 0.0

    @keras.saving.register_keras_serializable(package="crashtest")
    class CrashInTraining(keras.layers.Layer):
        def call(self, x, training=None):
            if training:
                return x + 0.0 * tf.reduce_sum(tf.py_function(_maybe_die, [], "float32"))
            return x
'''


def test_a_trial_that_crashes_is_recorded_and_the_search_goes_on(tmp_path, monkeypatch):
    import keras
    from sklearn.datasets import load_digits

    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    monkeypatch.setenv("CRASH_LAYER", "1")
    spec = importlib.util.spec_from_file_location("crash_site", tmp_path / "sitecustomize.py")
    site = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(site)  # registers the layer here too (no CRASH_TEST: it never dies in this process)
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"),
                              site.CrashInTraining(name="crash"), keras.layers.Dense(10)])
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:1400], y[:1400], epochs=5, batch_size=64, verbose=0)
    model.save(tmp_path / "m.keras")
    np.savez(tmp_path / "d.npz", x_train=x[:1400], y_train=y[:1400], x_test=x[1400:], y_test=y[1400:])

    env = {k: v for k, v in os.environ.items() if k not in ("TF_ENABLE_ONEDNN_OPTS", "TFOPT_NO_SUPERVISOR")}
    env.update(CRASH_LAYER="1", CRASH_TEST=str(tmp_path / "count"), PYTHONPATH=str(tmp_path),
               TF_CPP_MIN_LOG_LEVEL="2")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "tfopt.cli", "optimize", str(tmp_path / "m.keras"), "--data",
                           str(tmp_path / "d.npz"), "--output", str(out), "--level", "2", "--max_trials", "2"],
                          capture_output=True, text=True, env=env, timeout=1200, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "count").read_text() == "2"  # the layer killed two processes
    # (a line may begin with the progress bar the dead process left unfinished)
    warnings = [line for line in proc.stderr.splitlines() if "tfopt optimize: warning:" in line]
    assert len(warnings) == 2 and all("SIGSEGV" in line for line in warnings), proc.stderr[-3000:]
    assert "TF_ENABLE_ONEDNN_OPTS=0" in warnings[0] and "going on with the rest" in warnings[1]
    assert "Traceback" not in proc.stderr
    report = json.load(open(out / "report.json"))
    assert report["trials_completed"] == 2 and report["best"] is not None
    dead = report["failed_trials"]
    assert len(dead) == 2 and all("SIGSEGV" in row["error"] for row in dead), dead
    assert {row["number"] for row in dead}.isdisjoint({int(c["name"][1:4]) for c in report["candidates"]})
