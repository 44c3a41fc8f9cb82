"""Small file helpers shared by the package: atomic writes."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import numpy as np
from tfopt.errors import InvalidTypeError


def atomic_write(path: str | os.PathLike, content: bytes) -> str:
    """Writes bytes to `path` through a temporary file in the same folder, then renames.

    A crash mid-write never leaves a truncated file at `path`. Returns the path.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


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
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        model.save(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
