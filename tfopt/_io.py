"""Writing files without ever losing the user's: output checks before work, atomic writes, temp files cleaned.

- `check_outputs` refuses, before any work starts, an output that is an input or
  another output, a folder where a file is expected, a path under a file, or a
  location that cannot be written.
- `atomic_write`, `write_json` and `save_keras_model` write a temporary file in
  the target's folder, fsync it and rename it over the target: the target is
  either the old file or the complete new one, never half written.
- Temporary files are removed on any exit: exceptions, and SIGTERM / SIGINT,
  for which handlers are installed only while a write is in progress and the
  previous handlers restored afterwards. A SIGKILL cannot be caught: the next
  write to the same target removes the temporary files left by dead processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import threading
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
from tfopt.errors import InvalidArgumentError, InvalidTypeError

TEMP_PREFIX = ".tmp-tfopt-"
_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_lock = threading.Lock()
_active: set[str] = set()  # temporary paths being written now
_previous: dict[int, Any] = {}  # signal -> handler before ours (installed while _active is non-empty)


def check_outputs(
    outputs: Mapping[str, Any],
    inputs: Mapping[str, Any] | None = None,
    *,
    folders: Iterable[str] = (),
) -> dict[str, str]:
    """Checks output paths before any work starts; returns `{label: absolute path}`.

    Refuses an output that resolves (symlinks followed) to an input, into an
    input folder (a SavedModel), or to another output, an existing folder where a file is expected (or a file where a folder
    is expected), a path under an existing file, and a location where a file
    cannot be created (checked by creating and removing a probe file).

    Args:
        outputs: label (e.g. `"--output"`, `"--json"`) -> path; `None` values are skipped.
        inputs: label (e.g. `"MODEL"`, `"--data"`) -> path of the command's inputs. Defaults to `None`.
        folders: labels of `outputs` that are folders rather than files. Defaults to `()`.

    Returns:
        The absolute path of every output given.

    Raises:
        InvalidArgumentError: one line naming the flag, the path, what is wrong and how to fix it.

    Example:

    >>> from tfopt._io import check_outputs
    >>> try:
    ...     check_outputs({"--output": "model.keras"}, {"MODEL": "model.keras"})
    ... except ValueError as err:
    ...     print(str(err).split(":")[0])
    --output 'model.keras' is the same file as MODEL 'model.keras'
    """
    folders = set(folders)
    given_inputs = {label: os.fspath(p) for label, p in (inputs or {}).items() if p is not None}
    real_inputs = {label: os.path.realpath(p) for label, p in given_inputs.items()}
    seen: dict[str, str] = {}
    result: dict[str, str] = {}
    for label, raw in outputs.items():
        if raw is None:
            continue
        path = os.fspath(raw)
        if not path:
            raise InvalidArgumentError(f"{label} is empty. Pass a file path.")
        real = os.path.realpath(path)
        for in_label, in_real in real_inputs.items():
            if real == in_real or _same_file(path, given_inputs[in_label]):
                raise InvalidArgumentError(
                    f"{label} {path!r} is the same file as {in_label} {given_inputs[in_label]!r}: writing it would "
                    "destroy the input. Pass a different output path."
                )
        for in_label, in_real in real_inputs.items():
            if os.path.isdir(in_real) and real.startswith(in_real.rstrip(os.sep) + os.sep):
                raise InvalidArgumentError(
                    f"{label} {path!r} lies inside the input folder {in_label} {given_inputs[in_label]!r}: writing "
                    "it would change the input. Pass a path outside that folder."
                )
        if real in seen:
            raise InvalidArgumentError(
                f"{label} {path!r} is the same path as {seen[real]}: one would overwrite the other. "
                "Pass different paths."
            )
        seen[real] = f"{label} {path!r}"
        _check_location(label, path, folder=label in folders)
        result[label] = os.path.abspath(path)
    return result


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _check_location(label: str, path: str, *, folder: bool) -> None:
    if os.path.isdir(path) and not folder:
        raise InvalidArgumentError(f"{label} {path!r} is a folder; expected a file path. Pass e.g. {os.path.join(path, 'out')!r}.")
    if os.path.exists(path) and folder and not os.path.isdir(path):
        raise InvalidArgumentError(f"{label} {path!r} is a file; expected a folder. Pass a folder path.")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise InvalidArgumentError(
            f"{label} {path!r} lies under {parent!r}, which is a file, not a folder. Pass a path in a folder."
        )
    probe_folder = path if folder and os.path.isdir(path) else parent
    try:
        fd, probe = tempfile.mkstemp(dir=probe_folder, prefix=TEMP_PREFIX + "probe-")
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise InvalidArgumentError(
            f"{label} {path!r} cannot be written: {probe_folder!r} is not writable ({err.strerror or err}). "
            "Pass a path in a folder you can write to."
        ) from err


def atomic_write(path: str | os.PathLike, content: bytes) -> str:
    """Writes bytes to `path` through a temporary file in the same folder (fsync, rename).

    A crash or a signal mid-write never leaves a truncated file at `path` nor a
    temporary file next to it. Returns the path.
    """
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(content)
    return os.fspath(path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yields a temporary path next to `path`; on success it is fsynced and renamed to `path`.

    The temporary name ends with the target's name, so writers that pick a format
    from the suffix (`model.save`) work. On an exception, SIGTERM or SIGINT the
    temporary file is removed and `path` is left as it was.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{TEMP_PREFIX}{os.getpid()}-", suffix="-" + os.path.basename(path))
    os.close(fd)
    _register(tmp)
    try:
        yield tmp
        _fsync(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
        _fsync_folder(folder)
    finally:
        _unregister(tmp)
        _remove(tmp)


def remove_stale_temps(path: str | os.PathLike) -> list[str]:
    """Removes temporary files for `path` left by tfopt processes that no longer run (e.g. after SIGKILL)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    suffix = "-" + os.path.basename(path)
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if not (name.startswith(TEMP_PREFIX) and name.endswith(suffix)):
            continue
        pid_text = name[len(TEMP_PREFIX):].split("-", 1)[0]
        if pid_text.isdigit() and not _alive(int(pid_text)):
            _remove(os.path.join(folder, name))
            removed.append(os.path.join(folder, name))
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _remove(path: str) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            import shutil

            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)
    except FileNotFoundError:
        pass


def _fsync(path: str) -> None:
    if os.path.isdir(path):
        return
    with open(path, "rb+") as handle:
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_folder(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _register(tmp: str) -> None:
    with _lock:
        _active.add(tmp)
        if threading.current_thread() is not threading.main_thread() or _previous:
            return
        for sig in _SIGNALS:
            try:
                _previous[sig] = signal.signal(sig, _on_signal)
            except (ValueError, OSError):  # not the main thread of the main interpreter
                pass


def _unregister(tmp: str) -> None:
    with _lock:
        _active.discard(tmp)
        if not _active:
            _restore_handlers()


def _restore_handlers() -> None:
    for sig, handler in list(_previous.items()):
        try:
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        except (ValueError, OSError):
            pass
    _previous.clear()


def _on_signal(signum, frame) -> None:
    """Removes the temporary files being written, restores the previous handler and lets it act."""
    for tmp in list(_active):
        _remove(tmp)
    _active.clear()
    previous = _previous.get(signum, signal.SIG_DFL)
    _restore_handlers()
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        os.kill(os.getpid(), signum)  # the default action now: terminate as the signal asks


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_json(path: str | os.PathLike, payload: Any) -> str:
    """Writes `payload` as indented JSON, atomically. Objects with `to_dict()` are expanded."""
    return atomic_write(path, json.dumps(payload, indent=2, default=_jsonable).encode())


def _jsonable(obj: Any):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    raise InvalidTypeError(f"Not JSON serializable: {type(obj).__name__}")


def save_keras_model(model: Any, path: str | os.PathLike) -> str:
    """Saves a Keras model (.keras / .h5) atomically: Keras writes a temporary file, then it is renamed."""
    with atomic_path(path) as tmp:
        os.remove(tmp)  # Keras writes the file itself (h5py refuses some pre-existing empty files)
        model.save(tmp)
    return os.fspath(path)
