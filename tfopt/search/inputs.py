"""The optimize inputs: the data file / dict split into train, validation and test; the model loaded
once; both saved in the output folder so worker processes (and a restarted run) read the same ones."""

from __future__ import annotations

import hashlib
import io
import os
from typing import Any

import numpy as np

from tfopt._io import atomic_write
from tfopt.errors import InvalidArgumentError, MissingFileError

REQUIRED = ("x_train", "y_train", "x_test", "y_test")


def _as_dict(data: Any) -> dict[str, np.ndarray]:
    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        if not os.path.isfile(path):
            raise MissingFileError(f"Data file not found: {path!r}. Pass an .npz with x_train, y_train, x_test, y_test.")
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    if isinstance(data, dict):
        return dict(data)
    if all(hasattr(data, key) for key in REQUIRED):  # tfopt.datasets.Dataset and look-alikes
        out = {key: getattr(data, key) for key in REQUIRED}
        for key in ("x_val", "y_val"):
            if getattr(data, key, None) is not None:
                out[key] = getattr(data, key)
        return out
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(len(part) == 2 for part in data):
        (x_train, y_train), (x_test, y_test) = data
        return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    raise InvalidArgumentError(
        "data must be an .npz path, a dict, a tfopt Dataset or ((x_train, y_train), (x_test, y_test)) with "
        f"x_train, y_train, x_test, y_test (x_val / y_val optional). Received: {type(data).__name__}."
    )


def split_data(data: Any, *, seed: int = 0, val_fraction: float = 0.15) -> dict[str, np.ndarray]:
    """Train / validation / test arrays; validation carved from x_train (seeded) unless x_val / y_val are given.

    >>> x = np.arange(40, dtype="float32").reshape(20, 2); y = np.arange(20) % 2
    >>> parts = split_data({"x_train": x, "y_train": y, "x_test": x[:4], "y_test": y[:4]})
    >>> len(parts["x_train"]) + len(parts["x_val"])
    20
    """
    raw = _as_dict(data)
    missing = [key for key in REQUIRED if key not in raw]
    if missing:
        raise InvalidArgumentError(f"data lacks {missing}; it holds {sorted(raw)}. Needed: {list(REQUIRED)} (+ x_val, y_val).")
    out = {key: np.asarray(raw[key]) for key in REQUIRED}
    if "x_val" in raw and "y_val" in raw:
        out["x_val"], out["y_val"] = np.asarray(raw["x_val"]), np.asarray(raw["y_val"])
        return out
    n = len(out["x_train"])
    # Small datasets get a quarter (up to 1,000 examples): on 600, half a point is 3 examples, too noisy to select on.
    n_val = int(min(2000, max(min(1000, n // 4), round(val_fraction * n))))
    order = np.random.default_rng(seed).permutation(n)
    val, train = order[:n_val], order[n_val:]
    out["x_val"], out["y_val"] = out["x_train"][val], out["y_train"][val]
    out["x_train"], out["y_train"] = out["x_train"][train], out["y_train"][train]
    return out


def validation_given(data: Any) -> bool:
    """Whether `data` holds its own x_val / y_val (else `split_data` carves them from x_train)."""
    if isinstance(data, (str, os.PathLike)) and os.path.isfile(os.fspath(data)):
        with np.load(os.fspath(data), allow_pickle=False) as npz:
            return "x_val" in npz.files and "y_val" in npz.files
    if isinstance(data, dict):
        return "x_val" in data and "y_val" in data
    return getattr(data, "x_val", None) is not None and getattr(data, "y_val", None) is not None


def memorised_validation(val_score: float, test_score: float, *, n_val: int, n_test: int) -> str | None:
    """A warning when an accuracy on a validation split carved from x_train is far above the test accuracy.

    The model was most likely trained on those examples: drops measured on them
    do not predict drops on new data (the model's memory of them is what
    compression erodes first, or what it keeps), so the search selects on a
    biased measure. "Far" is more than one point and more than 2.5 standard
    errors (one-sided p < 0.01) of the difference of two proportions.

    >>> memorised_validation(1.0, 0.95, n_val=1000, n_test=1000) is not None
    True
    >>> memorised_validation(0.955, 0.95, n_val=1000, n_test=1000) is None
    True
    """
    if not (0.0 <= test_score <= 1.0 and 0.0 <= val_score <= 1.0) or n_val < 1 or n_test < 1:
        return None
    p = 0.5 * (val_score + test_score)
    error = float(np.sqrt(max(p * (1 - p), 1e-12) * (1.0 / n_val + 1.0 / n_test)))
    gap = val_score - test_score
    if gap <= max(0.01, 2.5 * error):
        return None
    return (
        f"The model scores {100 * val_score:.1f}% on the validation split tfopt carved from x_train but "
        f"{100 * test_score:.1f}% on x_test: it was probably trained on those examples, so accuracy drops "
        "measured on them say little about new data. Pass x_val / y_val held out from training "
        "(tfopt.datasets.Dataset.hold_out does it for tfopt's datasets)."
    )


def fingerprint(model, data: dict[str, np.ndarray]) -> str:
    """A hash of the model's weights and the data: a restart must continue the same study, not another."""
    digest = hashlib.sha256()
    for weights in model.get_weights():
        digest.update(np.ascontiguousarray(weights).tobytes())
    for key in sorted(data):
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(data[key]).tobytes())
    return digest.hexdigest()[:16]


def save_inputs(model, data: dict[str, np.ndarray], folder: str) -> dict[str, str]:
    """Writes `model.keras` and `data.npz` into `folder` (atomically) for worker processes."""
    from tfopt._io import save_keras_model

    os.makedirs(folder, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **data)
    return {
        "model": save_keras_model(model, os.path.join(folder, "model.keras")),
        "data": atomic_write(os.path.join(folder, "data.npz"), buffer.getvalue()),
    }


def load_model(model: Any):
    """A Keras model, or a model file loaded safely (no lambdas)."""
    from tfopt._keras import is_keras_model, load_model as load

    if is_keras_model(model):
        return model
    if isinstance(model, (str, os.PathLike)):
        return load(os.fspath(model))
    raise InvalidArgumentError(f"model must be a Keras model or a model file path. Received: {type(model).__name__}.")
