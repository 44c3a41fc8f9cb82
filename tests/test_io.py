"""tfopt._io: output checks before work, atomic writes, and no temporary file left on any exit."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from tfopt import _io
from tfopt.errors import InvalidArgumentError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _temps(folder) -> list[str]:
    return [name for name in os.listdir(folder) if name.startswith(".tmp-")]


def test_atomic_write_content_permissions_and_no_temp(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    _io.atomic_write(target, b"hello")
    assert target.read_bytes() == b"hello"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o666 & ~umask
    assert _temps(target.parent) == []


def test_atomic_path_failure_keeps_old_file(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with _io.atomic_path(target) as tmp:
            with open(tmp, "w") as handle:
                handle.write("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert _temps(tmp_path) == []


def test_atomic_path_restores_signal_handlers(tmp_path):
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    with _io.atomic_path(tmp_path / "a.txt") as tmp:
        assert signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]
        with _io.atomic_path(tmp_path / "b.txt") as inner:  # nested writes share the handlers
            open(inner, "w").close()
        assert signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]
        open(tmp, "w").close()
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_write_json_and_save_keras_model(tmp_path, tiny_cnn):
    import numpy as np

    _io.write_json(tmp_path / "r.json", {"a": np.float32(1.5), "b": np.arange(2)})
    assert (tmp_path / "r.json").read_text().replace(" ", "").replace("\n", "") == '{"a":1.5,"b":[0,1]}'
    for name in ("m.keras", "m.h5"):
        _io.save_keras_model(tiny_cnn, tmp_path / name)
        assert (tmp_path / name).stat().st_size > 1000
    assert _temps(tmp_path) == []


_CHILD = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {root!r})
    from tfopt import _io
    with _io.atomic_path({target!r}) as tmp:
        with open(tmp, "w") as handle:
            handle.write("partial")
        print("writing", flush=True)
        time.sleep(60)
    """
)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=["term", "int", "kill"])
def test_signal_mid_write_leaves_no_partial_output(tmp_path, signum):
    target = tmp_path / "out.keras"
    child = subprocess.Popen([sys.executable, "-c", _CHILD.format(root=ROOT, target=str(target))],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "writing"
        assert len(_temps(tmp_path)) == 1
        child.send_signal(signum)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signum  # the process still dies of the signal it got
    assert not target.exists()
    if signum == signal.SIGKILL:  # uncatchable: the next write to the same target removes the leftover
        assert len(_temps(tmp_path)) == 1
        _io.atomic_write(target, b"complete")
        assert target.read_bytes() == b"complete"
    assert _temps(tmp_path) == []


def test_remove_stale_temps_only_dead_processes(tmp_path):
    target = tmp_path / "out.json"
    dead = tmp_path / f"{_io.TEMP_PREFIX}999999999-abc-out.json"
    mine = tmp_path / f"{_io.TEMP_PREFIX}{os.getpid()}-abc-out.json"
    other_target = tmp_path / f"{_io.TEMP_PREFIX}999999999-abc-other.json"
    for path in (dead, mine, other_target):
        path.write_text("x")
    assert _io.remove_stale_temps(target) == [str(dead)]
    assert mine.exists() and other_target.exists()


# --- check_outputs ---------------------------------------------------------------------------


def test_check_outputs_accepts_and_returns_absolute_paths(tmp_path):
    model = tmp_path / "m.keras"
    model.write_bytes(b"x")
    out = _io.check_outputs({"--output": str(tmp_path / "new" / "o.tflite"), "--json": None},
                            {"MODEL": str(model), "--data": None})
    assert out == {"--output": str(tmp_path / "new" / "o.tflite")}
    assert _temps(tmp_path) == []  # the probe file is gone
    assert not (tmp_path / "new").exists()  # nothing created before the work


def _refused(outputs, inputs=None, **kw) -> str:
    with pytest.raises(InvalidArgumentError) as caught:
        _io.check_outputs(outputs, inputs, **kw)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_check_outputs_refuses_output_equal_to_input(tmp_path, monkeypatch):
    model = tmp_path / "m.keras"
    model.write_bytes(b"model")
    monkeypatch.chdir(tmp_path)
    assert "same file as MODEL" in _refused({"--output": "m.keras"}, {"MODEL": str(model)})
    link = tmp_path / "link.keras"
    link.symlink_to(model)
    assert "same file as MODEL" in _refused({"--json": str(link)}, {"MODEL": str(model)})
    hard = tmp_path / "hard.keras"
    os.link(model, hard)
    assert "destroy the input" in _refused({"--output": str(hard)}, {"MODEL": str(model)})
    assert model.read_bytes() == b"model"


def test_check_outputs_refuses_output_inside_input_folder(tmp_path):
    saved_model = tmp_path / "saved_model"
    saved_model.mkdir()
    message = _refused({"--output": str(saved_model / "saved_model.pb")}, {"MODEL": str(saved_model)})
    assert "inside the input folder MODEL" in message
    assert _io.check_outputs({"--output": str(tmp_path / "saved_model.tflite")}, {"MODEL": str(saved_model)})


def test_check_outputs_refuses_two_equal_outputs(tmp_path):
    message = _refused({"--output": str(tmp_path / "a"), "--json": str(tmp_path / "." / "a")})
    assert "--json" in message and "same path as --output" in message


def test_check_outputs_refuses_bad_locations(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert "is a folder; expected a file" in _refused({"--output": str(tmp_path)})
    assert "which is a file" in _refused({"--json": str(a_file / "deeper" / "r.json")})
    assert "is a file; expected a folder" in _refused({"--output": str(a_file)}, folders=["--output"])
    assert "cannot be written" in _refused({"--output": "/proc/tfopt-test/out.tflite"})
    assert "is empty" in _refused({"--output": ""})
    if os.geteuid() != 0:  # root writes anywhere; the /proc case covers it
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert "not writable" in _refused({"--output": str(locked / "o")})


def test_check_outputs_accepts_existing_folder_output(tmp_path):
    assert _io.check_outputs({"--output": str(tmp_path)}, folders=["--output"]) == {"--output": str(tmp_path)}
