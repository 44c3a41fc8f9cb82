"""The parent side of the warm measurement worker: one child process reused across calls.

Every LiteRT run in tfopt (benchmark, evaluate, compare, delegate_report) goes
through `run_task`, which hands the work to a long-lived child
(`tfopt.measure._serve`). Starting Python and importing the runtime costs about
0.3 s; the worker pays it once. Crash isolation stays: a model that aborts or
segfaults the interpreter kills the child, the call raises a `BenchmarkError`
naming the step it was in, and the next call starts a fresh worker. A call that
runs past its timeout kills the worker the same way.

No orphans: the child dies with this process (parent-death signal and a
watchdog, see `_serve.die_with_parent`), lives in its own process group that is
killed at exit and on SIGTERM / SIGHUP, and writes no file to disk (its output
goes to an unlinked temporary file).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from tfopt.errors import BenchmarkError
from tfopt.measure import _isolate
from tfopt.measure._serve import STAGE_BYTES, map_stage, read_stage, recv, send, widen_pipe, write_stage

_RECYCLE_AFTER = 1000  # calls; a long search gets a fresh child now and then
_live: set[MeasureWorker] = set()


class MeasureWorker:
    """A child process that runs measurement tasks; restarted after a crash or a timeout."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._owner = 0
        self._calls = 0
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def run(self, task: str, request: dict[str, Any], *, timeout: float, runtime: str,
            meanwhile: Any = None) -> dict[str, Any]:
        """Runs one task in the child and returns its result, or raises BenchmarkError.

        `meanwhile`, a callable, runs here while the child works.
        """
        with self._lock:
            self._ensure(timeout)
            deadline = time.monotonic() + timeout
            position = self._err.seek(0, os.SEEK_END)
            try:
                send(self._write, (task, request))
                if meanwhile is not None:
                    meanwhile()
                kind, payload = recv(self._read, deadline)
            except TimeoutError:
                where = read_stage(self._slot)
                self.stop()
                raise BenchmarkError(
                    f"{runtime} did not finish within {timeout:g} s (during '{where}'); pass a larger timeout= or "
                    "fewer runs."
                ) from None
            except (EOFError, OSError):
                where = read_stage(self._slot)
                status = self._reap()
                tail = self._stderr_tail(position)
                self.stop()
                raise BenchmarkError(
                    f"{runtime} crashed ({_cause(status)}) during '{where}'{': ' + tail if tail else ''}. The model "
                    "is likely malformed or uses something this runtime does not support; check it with "
                    "tfopt.inspect_tflite, or re-convert it."
                ) from None
            except BaseException:  # KeyboardInterrupt mid-call: the child's state is unknown
                self.stop()
                raise
            self._calls += 1
            if kind == "error":
                raise BenchmarkError(payload)
            if kind == "bug":
                raise RuntimeError(f"internal error in the tfopt measurement worker (please report it):\n{payload}")
            if self._calls >= _RECYCLE_AFTER:
                self.stop()
            return payload

    def _ensure(self, timeout: float) -> None:
        if self._proc is not None and self._owner == os.getpid() and self._proc.poll() is None:
            return
        if self._owner != os.getpid():  # inherited across fork: the pipes belong to the parent
            self._proc = None
        else:
            self.stop()
        self._start(timeout)

    def _start(self, timeout: float) -> None:
        _isolate.install_handlers()
        a_read, a_write = os.pipe()  # parent -> child
        from_child, to_parent = os.pipe()  # child -> parent
        for fd in (a_write, from_child):
            widen_pipe(fd)
        self._stage_file = tempfile.TemporaryFile()  # unlinked: nothing stays on disk
        self._stage_file.truncate(STAGE_BYTES)
        self._slot = map_stage(self._stage_file.fileno())
        write_stage(self._slot, "start")
        stage_fd = self._stage_file.fileno()
        env = dict(os.environ)
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = package_root + os.pathsep + env.get("PYTHONPATH", "")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self._err = tempfile.TemporaryFile()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "tfopt.measure._serve", str(a_read), str(to_parent), str(stage_fd),
                 str(os.getpid())],
                pass_fds=(a_read, to_parent, stage_fd),
                stdin=subprocess.DEVNULL,
                stdout=self._err,
                stderr=self._err,
                env=env,
                start_new_session=True,
            )
        finally:
            os.close(a_read)
            os.close(to_parent)
        self._read, self._write, self._owner, self._calls = from_child, a_write, os.getpid(), 0
        _live.add(self)
        try:
            kind, _ = recv(self._read, time.monotonic() + max(timeout, 60.0))
        except (EOFError, TimeoutError, OSError):
            kind = None
        if kind != "ready":
            status = self._reap()
            tail = self._stderr_tail(0)
            self.stop()
            raise BenchmarkError(f"the measurement worker did not start ({_cause(status)}){': ' + tail if tail else ''}.")

    def _reap(self) -> int | None:
        """Waits for a child that is going away and returns its exit status (None if it would not end)."""
        proc = self._proc
        if proc is None:
            return None
        try:
            return proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        """Ends the child (its whole process group) and closes the pipes."""
        proc, self._proc = self._proc, None
        _live.discard(self)
        for fd in (getattr(self, "_read", None), getattr(self, "_write", None)):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._read = self._write = None
        for name in ("_slot", "_stage_file", "_err"):
            handle = getattr(self, name, None)
            if handle is not None and self._owner == os.getpid():
                try:
                    handle.close()
                except (OSError, ValueError, BufferError):
                    pass
        if proc is None or self._owner != os.getpid():
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                proc.kill()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def _stderr_tail(self, position: int) -> str:
        try:
            self._err.seek(position)
            text = self._err.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""
        return last_error_line(text)


def last_error_line(stderr: str) -> str:
    """The last line of stderr that is not a progress or INFO line (clipped)."""
    lines = [
        line
        for line in stderr.splitlines()
        if line.strip() and not line.startswith(("tfopt-stage:", "INFO:", "WARNING: All log messages"))
    ]
    return lines[-1].strip()[:300] if lines else ""


def _cause(status: int | None) -> str:
    if status is None:
        return "no exit status"
    if status < 0:
        try:
            return f"signal {signal.Signals(-status).name}"
        except ValueError:
            return f"signal {-status}"
    return f"exit code {status}"


_default = MeasureWorker()


def run_task(task: str, request: dict[str, Any], *, timeout: float = 600.0, fresh: bool = False,
             runtime: str = "the LiteRT interpreter", meanwhile: Any = None) -> dict[str, Any]:
    """Runs a task in the shared warm worker (or, with `fresh=True`, in a new child that then ends).

    `meanwhile`, a callable, runs in this process while the child works.
    """
    if not fresh:
        return _default.run(task, request, timeout=timeout, runtime=runtime, meanwhile=meanwhile)
    worker = MeasureWorker()
    try:
        return worker.run(task, request, timeout=timeout, runtime=runtime, meanwhile=meanwhile)
    finally:
        worker.stop()


def shutdown(*, remove_folders: bool = False) -> None:
    """Ends every worker and one-shot child this process started (on a signal, also their temp folders)."""
    _isolate.shutdown(remove_folders=remove_folders)


def _stop_workers() -> None:
    for worker in list(_live):
        worker.stop()


_isolate.at_shutdown(_stop_workers)
