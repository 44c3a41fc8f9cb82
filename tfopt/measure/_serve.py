"""The measuring child: framing, dying with the parent, and the warm worker's loop.

Run as `python -m tfopt.measure._serve READ_FD WRITE_FD STAGE_FD PARENT_PID`.
The parent (`tfopt.measure._worker`) sends `(task, request)` frames on one
pipe; the child answers on the other with one of `("ok", result)`,
`("error", message)` (the runtime refused the model) or `("bug", traceback)` (a
fault in tfopt itself). While it works it writes the name of its current step
into a small shared memory slot (`STAGE_FD`, an unlinked file both map), so a
crash can be placed without waking the parent at every step. The child imports
numpy and LiteRT once, so each call after the first pays no Python start-up.

The child never outlives its parent: on Linux it asks the kernel for a signal
when the parent dies (`prctl(PR_SET_PDEATHSIG)`), and everywhere a watchdog
thread exits when the parent pid changes. It ignores SIGINT (the parent decides
when to stop it) and lives in its own process group, which the parent kills.
This module imports only the standard library at the top.
"""

from __future__ import annotations

import mmap
import os
import pickle
import select
import signal
import struct
import sys
import time
import traceback
from typing import Any

from tfopt.measure._child import die_with_parent  # noqa: F401 - also used by the one-shot runners

_HEADER = struct.Struct("<Q")
_F_SETPIPE_SZ = 1031
STAGE_BYTES = 64


def widen_pipe(fd: int) -> None:
    """Asks Linux for a 1 MB pipe buffer, so a result is written in one go (ignored elsewhere)."""
    try:
        import fcntl

        fcntl.fcntl(fd, _F_SETPIPE_SZ, 1 << 20)
    except (OSError, ImportError, ValueError):
        pass


def map_stage(fd: int) -> mmap.mmap:
    """The shared stage slot on an open file of STAGE_BYTES bytes."""
    return mmap.mmap(fd, STAGE_BYTES)


def write_stage(slot: mmap.mmap, name: str) -> None:
    slot[:STAGE_BYTES] = name.encode("utf-8", "replace")[:STAGE_BYTES].ljust(STAGE_BYTES, b"\0")


def read_stage(slot: mmap.mmap) -> str:
    return bytes(slot[:STAGE_BYTES]).rstrip(b"\0").decode("utf-8", "replace") or "start"


def send(fd: int, message: Any) -> None:
    """Writes one length-prefixed pickle frame."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def recv(fd: int, deadline: float | None = None) -> Any:
    """Reads one frame. Raises EOFError when the other side closed, TimeoutError past `deadline`."""
    header = _read_exact(fd, _HEADER.size, deadline)
    (size,) = _HEADER.unpack(header)
    return pickle.loads(_read_exact(fd, size, deadline))


def _read_exact(fd: int, size: int, deadline: float | None) -> bytes:
    chunks, left = [], size
    while left:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _reset_peak() -> None:
    """Resets VmHWM to the current RSS (Linux), so each task reports its own peak."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def peak_rss_kb() -> int | None:
    """This process's peak resident memory (VmHWM) in KB, or None off Linux."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def serve(read_fd: int, write_fd: int, stage_fd: int, parent_pid: int) -> int:
    """Answers tasks until the parent closes the pipe."""
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from tfopt.measure import _runner

    slot = map_stage(stage_fd)
    _runner.warm_up()
    _runner.set_stage_sink(lambda name: write_stage(slot, name))
    send(write_fd, ("ready", os.getpid()))
    while True:
        try:
            task, request = recv(read_fd)
        except EOFError:
            return 0
        _reset_peak()
        write_stage(slot, "start")
        try:
            result = _runner.run_task(task, request)
        except (ValueError, RuntimeError) as err:  # what LiteRT raises for a model it cannot run
            send(write_fd, ("error", str(err)))
            continue
        except Exception:  # noqa: BLE001 - a fault in tfopt: the parent re-raises it with this traceback
            send(write_fd, ("bug", traceback.format_exc()))
            continue
        if task == "benchmark":
            result["peak_rss_kb"] = peak_rss_kb()
        send(write_fd, ("ok", result))


if __name__ == "__main__":
    sys.exit(serve(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
