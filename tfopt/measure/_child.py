"""A measuring child never outlives its parent: the one helper the warm worker and the one-shot runners share.

Standard library only, so the child imports nothing heavy before it is told what to run.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int, *, cleanup: str | None = None) -> None:
    """Makes this process end when `parent_pid` ends (prctl on Linux, a watchdog thread everywhere).

    With `cleanup` (the parent's temp folder of a one-shot child), the death
    signal is SIGTERM and the folder is removed before exiting, since a parent
    killed with SIGKILL cannot remove it itself.
    """

    def finish() -> None:
        if cleanup and os.getppid() != parent_pid:
            import shutil

            shutil.rmtree(cleanup, ignore_errors=True)
        os._exit(1)

    death_signal = signal.SIGTERM if cleanup else signal.SIGKILL
    if cleanup:
        signal.signal(signal.SIGTERM, lambda signum, frame: finish())
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(death_signal), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        finish()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                finish()

    threading.Thread(target=watch, name="tfopt-parent-watch", daemon=True).start()
