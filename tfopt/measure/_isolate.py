"""Runs one measuring step in a child Python process and reads back its JSON result.

A runtime that aborts or segfaults on a bad model (LiteRT, TFLite Micro) then
kills the child, not the caller. The child reports progress as `tfopt-stage:`
lines on stderr, so a crash can be placed. While the child runs, its peak
resident memory (VmHWM) is read from /proc.

This is the one-shot path (a new child per call, files in `tmp`), used by the
TFLite Micro check. LiteRT work goes through the warm worker
(`tfopt.measure._worker`) instead. The child gets `TFOPT_PARENT_PID` so it dies
with this process; it runs in its own process group, which is killed on a
timeout, at exit and on SIGTERM.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from tfopt.errors import BenchmarkError

_children: set[subprocess.Popen] = set()
_folders: set[str] = set()  # temp folders of running children, removed if this process is told to stop
_cleanups: list[Callable[[], None]] = []  # run first at shutdown (the warm workers register theirs)
_handlers_installed = False
_install_lock = threading.Lock()


def run_child(
    module: str,
    request: dict[str, Any],
    tmp: str,
    *,
    timeout: float,
    runtime: str = "the LiteRT interpreter",
) -> tuple[dict[str, Any], int | None]:
    """Runs `python -m module REQUEST.json`; returns (result dict, peak RSS in KB or None).

    The request must hold `result_path`; the child writes `{"ok": true, ...}` or
    `{"ok": false, "error": ...}` there.

    Raises:
        BenchmarkError: the child crashed, timed out, or reported an error.
    """
    request_path = os.path.join(tmp, "request.json")
    with open(request_path, "w") as handle:
        json.dump(request, handle)
    env = dict(os.environ)
    package_root = os.path.dirname(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    )
    env["PYTHONPATH"] = package_root + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["TFOPT_PARENT_PID"] = str(os.getpid())
    env["TFOPT_CLEANUP_DIR"] = os.path.abspath(tmp)  # the child removes it if this process dies first
    install_handlers()
    with (
        tempfile.TemporaryFile(mode="w+") as out,
        tempfile.TemporaryFile(mode="w+") as err,
    ):
        proc = subprocess.Popen(
            [sys.executable, "-m", module, request_path],
            stdout=out,
            stderr=err,
            env=env,
            start_new_session=True,
        )
        _children.add(proc)
        _folders.add(os.path.abspath(tmp))
        try:
            status, peak_kb = _wait(proc, timeout)
        finally:
            _kill(proc)
            _folders.discard(os.path.abspath(tmp))
        err.seek(0)
        stderr = err.read()
    stages = [
        line.split(":", 1)[1].strip()
        for line in stderr.splitlines()
        if line.startswith("tfopt-stage:")
    ]
    where = stages[-1] if stages else "start"
    if status is None:
        raise BenchmarkError(
            f"{runtime} did not finish within {timeout:.0f} s (during '{where}'); pass a larger timeout= or fewer runs."
        )
    if status != 0:
        cause = (
            f"signal {signal.Signals(-status).name}"
            if status < 0
            else f"exit code {status}"
        )
        tail = last_error_line(stderr)
        raise BenchmarkError(
            f"{runtime} crashed ({cause}) during '{where}'{': ' + tail if tail else ''}. "
            "The model is likely malformed or uses something this runtime does not support; "
            "check it with tfopt.inspect_tflite, or re-convert it."
        )
    if not os.path.exists(request["result_path"]):
        raise BenchmarkError(
            f"{runtime} ended during '{where}' without a result: {last_error_line(stderr)}"
        )
    with open(request["result_path"]) as handle:
        raw = json.load(handle)
    if not raw.get("ok"):
        raise BenchmarkError(raw.get("error", "unknown error"))
    return raw, peak_kb


def _wait(proc: subprocess.Popen, timeout: float) -> tuple[int | None, int | None]:
    """Reaps the child; kills it after `timeout` seconds. Returns (exit status or None, peak RSS KB).

    The peak is the child's VmHWM read from /proc while it runs (a high-water mark,
    so the last read holds the peak up to a few ms before exit). `ru_maxrss` from
    wait4 is not used on Linux: it keeps the parent's RSS at fork time across exec,
    so a parent holding TensorFlow would inflate every child to its own size.
    """
    deadline = time.monotonic() + timeout
    status_path = f"/proc/{proc.pid}/status"
    peak: int | None = None
    while True:
        peak = max(peak or 0, _hwm_kb(status_path) or 0) or peak
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            if peak is None and sys.platform == "darwin":
                peak = usage.ru_maxrss // 1024  # bytes on macOS
            return proc.returncode, peak
        if time.monotonic() > deadline:
            _kill(proc)
            return None, None
        time.sleep(0.005)


def _kill(proc: subprocess.Popen) -> None:
    """Kills the child's process group (if it still runs) and forgets it."""
    _children.discard(proc)
    if proc.returncode is None and proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        proc.wait()


def kill_children(*, remove_folders: bool = False) -> None:
    """Kills every one-shot child still running (at exit or on a signal), and on a signal removes their folders."""
    for proc in list(_children):
        _kill(proc)
    if remove_folders:
        import shutil

        for folder in list(_folders):
            shutil.rmtree(folder, ignore_errors=True)


def at_shutdown(cleanup: Callable[[], None]) -> None:
    """Runs `cleanup` at exit and on SIGTERM / SIGHUP, before the one-shot children are killed."""
    if cleanup not in _cleanups:
        _cleanups.append(cleanup)


def shutdown(*, remove_folders: bool = False) -> None:
    """Ends every worker and one-shot child this process started (on a signal, also their temp folders)."""
    for cleanup in list(_cleanups):
        cleanup()
    kill_children(remove_folders=remove_folders)


def _on_signal(signum, frame) -> None:  # noqa: ARG001
    shutdown(remove_folders=True)  # the signal ends this process without unwinding its `with` blocks
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def install_handlers() -> None:
    """At exit and on SIGTERM / SIGHUP (when nobody else handles them) the children go first."""
    global _handlers_installed
    with _install_lock:
        if _handlers_installed:
            return
        _handlers_installed = True
        atexit.register(shutdown)
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if signum is not None and signal.getsignal(signum) is signal.SIG_DFL:
                signal.signal(signum, _on_signal)


def _hwm_kb(path: str) -> int | None:
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def last_error_line(stderr: str) -> str:
    """The last line of stderr that is not a progress or INFO line (clipped)."""
    lines = [
        line
        for line in stderr.splitlines()
        if line.strip()
        and not line.startswith(("tfopt-stage:", "INFO:", "WARNING: All log messages"))
    ]
    return lines[-1].strip()[:300] if lines else ""
