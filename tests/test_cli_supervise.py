"""Training commands survive a native crash of TensorFlow (tfopt._cli.supervise).

The crashing model is a real model file: a small CNN on real digits whose Lambda
layer (loaded with --unsafe) calls `os.kill(os.getpid(), SIGSEGV)` from a
`tf.py_function` in its training step, so the process dies inside `fit` with a
signal, as TensorFlow's oneDNN kernels did on an AVX-512 host. The environment
variable CRASH_TEST chooses when it dies: `onednn` (only while
TF_ENABLE_ONEDNN_OPTS is not 0, like the real bug) or `always`.

Each test runs `python -m tfopt.cli` as a user would and looks at the processes
left behind through /proc, by a tag in their environment.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
import zipfile

import pytest

from tfopt import cli
from tfopt._cli import prune, supervise

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# Dies in the training step only (inference and Keras' shape inference run with training falsy).
CRASH = (lambda x, training: x + 0.0 * __import__("tensorflow").reduce_sum(__import__("tensorflow").py_function(
    lambda: (__import__("os").kill(__import__("os").getpid(), 11)
             if __import__("os").environ.get("CRASH_TEST") == "always"
             or (__import__("os").environ.get("CRASH_TEST") == "onednn"
                 and __import__("os").environ.get("TF_ENABLE_ONEDNN_OPTS", "") != "0") else 0.0),
    [], "float32")) if training else x)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import keras

    from tfopt.datasets import load_dataset

    folder = tmp_path_factory.mktemp("supervise")
    load_dataset("digits").to_npz(str(folder / "data.npz"))
    keras.utils.set_random_seed(0)
    keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv"),
        keras.layers.Lambda(CRASH, name="crash_in_training"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(10, name="logits"),
    ]).save(str(folder / "crash.keras"))
    return folder


def _env(tag: str, crash: str, onednn: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_ENABLE_ONEDNN_OPTS", "PYTHONFAULTHANDLER",
                                                             supervise.OPT_OUT_ENV)}
    env.update(CRASH_TEST=crash, TFOPT_TEST_TAG=tag, TF_CPP_MIN_LOG_LEVEL="2")
    if onednn is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = onednn
    return env


def _prune(files, out, *extra) -> list[str]:
    return [sys.executable, "-m", "tfopt.cli", "prune", str(files / "crash.keras"), "--data", str(files / "data.npz"),
            "--output", str(out), "--unsafe", "--quiet", *extra]


def _tagged(tag: str) -> list[int]:
    """Pids of live processes whose environment holds TFOPT_TEST_TAG=tag."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = handle.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if f"TFOPT_TEST_TAG={tag}".encode() in environ and state != "Z":
            pids.append(int(entry))
    return pids


def _tfopt_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("tfopt prune:")]


def test_supervise_native_crash_is_retried_with_onednn_off(files, tmp_path):
    tag, out = uuid.uuid4().hex, tmp_path / "pruned.keras"
    proc = subprocess.run(_prune(files, out, "--epochs", "1"), env=_env(tag, "onednn", None), capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = _tfopt_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("tfopt prune: warning: the prune process died of SIGSEGV (Segmentation fault) "
                               "while fine-tuning (fit); model layer types: Conv2D, Dense, Flatten, Lambda.")
    assert "Retrying once with TF_ENABLE_ONEDNN_OPTS=0" in lines[0]
    assert "Traceback" not in proc.stderr
    assert re.search(r"^unstructured: accuracy [\d.]+ -> [\d.]+", proc.stdout, re.MULTILINE), proc.stdout
    assert zipfile.is_zipfile(out) and sorted(os.listdir(tmp_path)) == ["pruned.keras"]
    assert _tagged(tag) == []


@pytest.mark.parametrize("onednn", [None, pytest.param("0", marks=pytest.mark.slow)],
                         ids=["onednn-on-retry-dies-too", "onednn-already-off"])
def test_supervise_crash_that_persists_exits_4_with_one_line(files, tmp_path, onednn):
    tag, out = uuid.uuid4().hex, tmp_path / "pruned.keras"
    proc = subprocess.run(_prune(files, out, "--epochs", "1"), env=_env(tag, "always", onednn), capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == supervise.EXIT_NATIVE_CRASH == 4, proc.stderr
    errors = [line for line in _tfopt_lines(proc.stderr) if line.startswith("tfopt prune: error:")]
    assert len(errors) == 1, proc.stderr
    assert "SIGSEGV" in errors[0] and "while fine-tuning (fit)" in errors[0] and "Lambda" in errors[0]
    warnings = [line for line in _tfopt_lines(proc.stderr) if line.startswith("tfopt prune: warning:")]
    if onednn is None:
        assert errors[0].startswith("tfopt prune: error: the retry with TF_ENABLE_ONEDNN_OPTS=0 died too")
        assert len(warnings) == 1 and "Retrying once" in warnings[0]
    else:
        assert "already off" in errors[0] and warnings == []
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert os.listdir(tmp_path) == []  # no output, no temporary file
    assert _tagged(tag) == []


def _start_training(files, tmp_path, tag):
    """A long prune run (the crash never fires); returns the command once its child prints an epoch line."""
    out = tmp_path / "pruned.keras"
    argv = _prune(files, out, "--epochs", "500")
    argv.remove("--quiet")
    proc = subprocess.Popen(argv, env=_env(tag, "never", None), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    for line in proc.stdout:
        if line.startswith("Epoch 2/500"):
            return proc
    raise AssertionError(f"training did not start (exit status {proc.wait()})")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL, pytest.param(signal.SIGINT, marks=pytest.mark.slow)],
                         ids=lambda s: s.name)
def test_supervise_killing_the_command_leaves_no_orphan(files, tmp_path, signum):
    tag = uuid.uuid4().hex
    proc = _start_training(files, tmp_path, tag)
    children = [pid for pid in _tagged(tag) if pid != proc.pid]
    assert len(children) == 1  # the supervised child, training
    proc.send_signal(signum)
    status = proc.wait(timeout=60)
    assert status == (-signal.SIGKILL if signum == signal.SIGKILL else 128 + signum if signum != signal.SIGINT
                      else 130)
    deadline = time.monotonic() + 30
    while _tagged(tag) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _tagged(tag) == []
    assert os.listdir(tmp_path) == []


def test_supervise_user_error_keeps_exit_2_and_its_line(files, tmp_path, capsys):
    # The error comes from the child (relayed, since capsys has no file descriptor).
    status = cli.main(["prune", str(files / "crash.keras"), "--data", str(files / "data.npz"), "--output",
                       str(tmp_path / "out.txt")])
    assert status == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("tfopt")]
    assert len(lines) == 1 and lines[0].startswith("tfopt prune: error: pass --output OUT.keras (or .h5).")
    assert "out.txt" in lines[0]


def test_supervise_child_arguments_reparse_to_the_same_flags():
    fv = cli.command_flags(prune)
    args = ["m.keras", "--data", "d.npz", "--include", "a,b", "--include", r"re:x{1,2}", "--prune_learning_rate",
            "0.002", "--nounsafe", "--target_sparsity=0.5", "--verbose"]
    positional = cli.parse_flags("prune", fv, args)
    arguments = supervise.child_arguments("prune", positional, fv)
    assert "--prune_learning_rate=0.002" not in arguments and "--learning_rate=0.002" in arguments
    again = cli.command_flags(prune)
    assert cli.parse_flags("prune", again, arguments[1:]) == ["m.keras"]
    for name in ("data", "include", "learning_rate", "unsafe", "target_sparsity", "verbose", "epochs", "output"):
        assert again[name].value == fv[name].value, name


def test_supervise_layer_types_reach_into_nested_models():
    import keras

    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)], name="inner")
    outer = keras.Sequential([keras.Input((4,)), inner, keras.layers.BatchNormalization()])
    assert supervise.layer_types(outer) == ["BatchNormalization", "Dense", "Sequential"]


def test_supervise_data_mistake_is_refused_before_any_child(files, tmp_path, capsys, monkeypatch):
    import numpy as np

    bad = tmp_path / "nan.npz"
    with np.load(files / "data.npz") as data:
        arrays = dict(data)
    arrays["x_train"] = np.where(arrays["x_train"] > 0.5, np.nan, arrays["x_train"])
    np.savez(bad, **arrays)

    def no_child(*args, **kwargs):
        raise AssertionError("a child process was started for a call that the parent can refuse")

    monkeypatch.setattr(supervise, "_attempt", no_child)
    status = cli.main(["prune", str(files / "crash.keras"), "--data", str(bad), "--output", str(tmp_path / "o.keras")])
    assert status == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tfopt")]
    assert len(lines) == 1 and lines[0].startswith("tfopt prune: error:") and "nan" in lines[0].lower()
