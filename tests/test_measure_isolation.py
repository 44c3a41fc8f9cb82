"""The measurement worker: warm across calls, isolated from crashes and hangs, and never left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest

from tfopt.errors import BenchmarkError
from tfopt.measure import _worker
from tfopt.measure._serve import read_stage
from tfopt.measure.benchmark import benchmark
from tfopt.measure.sweep import one_op_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _wait_for(predicate, seconds: float = 60.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_worker_is_reused_across_calls():
    model = one_op_model()
    benchmark(model, num_runs=2)
    pid = _worker._default.pid
    for _ in range(3):
        benchmark(model, num_runs=2)
    assert pid is not None and _worker._default.pid == pid
    assert pid in {p.pid for p in psutil.Process().children()}
    assert pid != os.getpid()


def test_crash_mid_call_names_the_stage_and_next_call_works():
    model = one_op_model()
    benchmark(model, num_runs=1)
    pid = _worker._default.pid
    idle = psutil.Process(pid).cpu_times().user  # the warm worker has already spent this much (imports)

    def invoking() -> bool:  # half a second of CPU spent in this call, and the stage says invoke
        busy = psutil.Process(pid).cpu_times().user - idle > 0.5
        return busy and read_stage(_worker._default._slot) == "invoke"

    def crash():  # what a segfaulting kernel looks like from the parent
        _wait_for(invoking, 60)
        os.kill(pid, signal.SIGSEGV)

    thread = threading.Thread(target=crash)
    thread.start()
    with pytest.raises(BenchmarkError, match=r"crashed \(signal SIGSEGV\) during 'invoke'"):
        benchmark(model, num_runs=50_000_000, warmup_runs=0)
    thread.join()
    result = benchmark(model, num_runs=3)
    assert result.num_runs == 3 and _worker._default.pid not in (None, pid)


def test_timeout_kills_the_worker_and_next_call_works():
    model = one_op_model()
    benchmark(model, num_runs=1)
    pid = _worker._default.pid
    with pytest.raises(BenchmarkError, match=r"did not finish within 2 s \(during 'invoke'\)"):
        benchmark(model, num_runs=50_000_000, warmup_runs=0, timeout=2)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert benchmark(model, num_runs=2).num_runs == 2


def test_fresh_process_per_call_option_leaves_no_child():
    before = {p.pid for p in psutil.Process().children()}
    raw = _worker.run_task("benchmark", {"content": one_op_model(), "num_threads": 1, "num_runs": 2,
                                         "warmup_runs": 0, "use_xnnpack": True}, timeout=60, fresh=True)
    assert len(raw["latencies_ms"]) == 2
    assert {p.pid for p in psutil.Process().children()} <= before


PARENT = r"""
import os, sys
sys.path.insert(0, {root!r})
from tfopt.measure.benchmark import benchmark
content = open({model!r}, "rb").read()
benchmark(content, num_runs=1)  # the worker is up and warm
print("ready", flush=True)
benchmark(content, num_runs=20_000_000, warmup_runs=0, timeout=600)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=["sigterm", "sigint", "sigkill"])
def test_killing_the_parent_leaves_no_child_and_no_temp_files(tmp_path, signum):
    model = tmp_path / "relu.tflite"
    model.write_bytes(one_op_model())
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch), "TF_CPP_MIN_LOG_LEVEL": "2"}
    script = PARENT.format(root=ROOT, model=str(model))
    parent = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert parent.stdout.readline().strip() == b"ready"
        proc = psutil.Process(parent.pid)
        assert _wait_for(lambda: any("tfopt.measure._serve" in " ".join(c.cmdline()) for c in proc.children()))
        children = proc.children(recursive=True)
        busy = sum(children[0].cpu_times()[:2])
        assert _wait_for(lambda: sum(children[0].cpu_times()[:2]) > busy + 0.3, 30)  # measuring, not starting
        parent.send_signal(signum)
        parent.wait(timeout=30)
        assert _wait_for(lambda: not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children), 10), [
            c.pid for c in children
        ]
        assert list(scratch.iterdir()) == []
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_results_travel_intact():
    x = np.random.default_rng(0).random((300, 4)).astype("float32")
    raw = _worker.run_task("outputs", {"content": one_op_model(), "xs": [x], "batch_size": 1}, timeout=60)
    np.testing.assert_array_equal(raw["predictions"][0], np.maximum(x, 0))


ONE_SHOT_PARENT = r"""
import os, sys, tempfile
sys.path.insert(0, {root!r})
from tfopt.measure._isolate import run_child
with tempfile.TemporaryDirectory(prefix="tfopt-oneshot-") as tmp:
    path = os.path.join(tmp, "m.tflite")
    with open(path, "wb") as handle:
        handle.write(open({model!r}, "rb").read())
    request = {{"tflite_path": path, "result_path": os.path.join(tmp, "r.json"), "num_threads": 1,
               "num_runs": 10_000_000, "warmup_runs": 0, "use_xnnpack": True, "input_shapes": {{}}}}
    print("ready", flush=True)
    run_child("tfopt.measure._runner", request, tmp, timeout=600)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=["sigterm", "sigint", "sigkill"])
def test_one_shot_child_and_its_folder_go_with_the_parent(tmp_path, signum):
    """The one-shot path (TFLite Micro check): the child dies and the parent's temp folder is removed."""
    model = tmp_path / "relu.tflite"
    model.write_bytes(one_op_model())
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch), "TF_CPP_MIN_LOG_LEVEL": "2"}
    script = ONE_SHOT_PARENT.format(root=ROOT, model=str(model))
    parent = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert parent.stdout.readline().strip() == b"ready"
        proc = psutil.Process(parent.pid)
        assert _wait_for(lambda: any("tfopt.measure._runner" in " ".join(c.cmdline()) for c in proc.children()))
        child = proc.children()[0]
        assert _wait_for(lambda: sum(child.cpu_times()[:2]) > 2.0, 60)  # imports done, measuring
        assert any(p.name.startswith("tfopt-oneshot-") for p in scratch.iterdir())
        parent.send_signal(signum)
        parent.wait(timeout=30)
        assert _wait_for(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, 10)
        assert _wait_for(lambda: list(scratch.iterdir()) == [], 10), list(scratch.iterdir())
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
