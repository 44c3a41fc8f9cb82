"""The `tfopt` CLI: convert and bench on real files; user errors exit 2 with one clear line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import tfopt


def run_cli(*args, cwd=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, "-m", "tfopt.cli", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import keras

    folder = tmp_path_factory.mktemp("cli")
    data = tfopt.load_dataset("digits")
    data.to_npz(str(folder / "data.npz"))
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(data.x_train, data.y_train, epochs=40, verbose=0)
    model.save(str(folder / "model.keras"))
    return folder


def test_cli_convert_then_bench(files):
    out, report = files / "m_int8.tflite", files / "bench.json"
    proc = run_cli("convert", str(files / "model.keras"), "--mode", "int8", "--calibration", str(files / "data.npz"),
                   "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    assert tfopt.inspect_tflite(str(out)).precision_counts == {"int8": 1}
    proc = run_cli("bench", str(out), "--data", str(files / "data.npz"), "--threads", "1", "--runs", "5",
                   "--json", str(report))
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(report.read_text())
    assert payload["accuracy"] > 0.8 and payload["latency_ms_median"] > 0 and payload["size_bytes"] == out.stat().st_size
    assert "accuracy" in proc.stdout


@pytest.mark.parametrize(
    "args, match",
    [
        (["convert", "missing.keras", "--output", "x.tflite"], "model not found"),
        (["convert", "{model}", "--mode", "int3", "--output", "x.tflite"], "unknown --mode 'int3'"),
        (["convert", "{model}", "--mode", "int8", "--output", "x.tflite"], "needs --calibration"),
        (["bench", "missing.tflite"], "not found"),
        (["bench", "{data}"], "not a TFLite flatbuffer"),
        (["bench", "{model}", "--data", "nothing.npz"], "Data file not found"),
        (["frobnicate"], "unknown command 'frobnicate'"),
    ],
    ids=["missing-model", "bad-mode", "no-calibration", "missing-tflite", "not-tflite", "missing-data", "bad-command"],
)
def test_cli_user_errors(files, args, match):
    args = [a.format(model=files / "model.keras", data=files / "data.npz") for a in args]
    proc = run_cli(*args, cwd=str(files))
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert match in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_bad_npz_keys(files):
    bad = files / "bad.npz"
    np.savez(bad, x=np.zeros((2, 8, 8, 1)))
    proc = run_cli("bench", str(files / "x.tflite"), "--data", str(bad))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_cli_usage_lists_commands():
    proc = run_cli()
    assert proc.returncode == 2 and "demo" in proc.stdout and "bench" in proc.stdout
