"""The optimize inputs: the data file / dict split into train, validation and test; the model loaded
once; both saved in the output folder so worker processes (and a restarted run) read the same ones."""

from __future__ import annotations

import hashlib
import io
import os
from typing import Any

import numpy as np

from tfopt._io import atomic_write
from tfopt.errors import InvalidArgumentError

REQUIRED = ("x_train", "y_train", "x_test", "y_test")


def _as_dict(data: Any) -> dict[str, np.ndarray]:
    if isinstance(data, (str, os.PathLike)):
        from tfopt.datasets import load_npz

        # The one loader of the CLI's data files: no unpickling, object arrays refused, one clear error.
        return load_npz(os.fspath(data), required=(), task=None)
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


MIN_SPLIT = 40  # below this, half of x_test cannot tell a point of accuracy from noise


def split_data(data: Any, *, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays optimize uses, and where its selection data comes from.

    Selection (which candidates meet the constraints, which is best) never
    looks at examples the model may have been trained on. With `x_val` /
    `y_val`, they are the selection data and `x_test` reports. Without them,
    `x_test` is split in two halves (stratified by class for class labels,
    seeded): `x_val` selects, the other half (`x_test` from then on) reports,
    so the reported drops are measured on examples nothing was chosen on.
    All of `x_train` stays for fine-tuning and calibration.

    Returns:
        `(parts, selection)`: `parts` holds `x_train`, `y_train`, `x_val`,
        `y_val`, `x_test`, `y_test`; `selection` says `source` (`"x_val"` or
        `"x_test"`), `n_selection`, `n_reporting` and, for a split, `seed`.

    Raises:
        tfopt.errors.InvalidArgumentError: a key missing, `x_val` without
            `y_val` (or the reverse), or fewer than 40 test examples to split.

    >>> x = np.arange(200, dtype="float32").reshape(100, 2); y = np.arange(100) % 2
    >>> parts, selection = split_data({"x_train": x, "y_train": y, "x_test": x, "y_test": y})
    >>> selection["source"], len(parts["x_val"]), len(parts["x_test"]), len(parts["x_train"])
    ('x_test', 50, 50, 100)
    """
    raw = _as_dict(data)
    missing = [key for key in REQUIRED if key not in raw]
    if missing:
        raise InvalidArgumentError(f"data lacks {missing}; it holds {sorted(raw)}. Needed: {list(REQUIRED)} (+ x_val, y_val).")
    if ("x_val" in raw) != ("y_val" in raw):
        given, lacking = ("x_val", "y_val") if "x_val" in raw else ("y_val", "x_val")
        raise InvalidArgumentError(
            f"data holds {given} but no {lacking}. Give both (a validation split held out of training), "
            "or neither (optimize then selects on half of x_test and reports on the other half)."
        )
    out = {key: np.asarray(raw[key]) for key in REQUIRED}
    if "x_val" in raw:
        out["x_val"], out["y_val"] = np.asarray(raw["x_val"]), np.asarray(raw["y_val"])
        if len(out["x_val"]) != len(out["y_val"]):
            raise InvalidArgumentError(
                f"x_val holds {len(out['x_val'])} examples but y_val {len(out['y_val'])} labels; they must match."
            )
        return out, {"source": "x_val", "n_selection": len(out["x_val"]), "n_reporting": len(out["x_test"])}
    n = len(out["x_test"])
    if n < MIN_SPLIT or len(out["y_test"]) != n:
        raise InvalidArgumentError(
            f"Without x_val, optimize selects on half of x_test and reports on the other half; x_test holds {n} "
            f"examples (and y_test {len(out['y_test'])}), at least {MIN_SPLIT} matching ones are needed. Pass more "
            "test examples, or x_val / y_val held out of training."
        )
    select = stratified_half(out["y_test"], seed=seed)
    report = np.setdiff1d(np.arange(n), select)
    out["x_val"], out["y_val"] = out["x_test"][select], out["y_test"][select]
    out["x_test"], out["y_test"] = out["x_test"][report], out["y_test"][report]
    return out, {"source": "x_test", "n_selection": len(select), "n_reporting": len(report), "seed": seed}


def describe_selection(selection: dict[str, Any]) -> str:
    """One sentence: where selection and reported numbers come from.

    >>> describe_selection({"source": "x_test", "n_selection": 500, "n_reporting": 500, "seed": 0})
    'selection on half of x_test (500 examples, stratified by class, seed 0); numbers reported on the other half (500)'
    """
    if selection["source"] == "x_val":
        return (f"selection on x_val ({selection['n_selection']} examples held out of training); numbers reported "
                f"on x_test ({selection['n_reporting']})")
    return (f"selection on half of x_test ({selection['n_selection']} examples, stratified by class, seed "
            f"{selection.get('seed', 0)}); numbers reported on the other half ({selection['n_reporting']})")


def stratified_half(labels: np.ndarray, *, seed: int) -> np.ndarray:
    """Sorted indices of half of the examples, half of each class when `labels` are class labels.

    Integer labels (or one-hot rows) are classes; anything else (regression
    targets) is split at random.

    >>> stratified_half(np.array([0, 0, 1, 1, 1, 1]), seed=0).size
    3
    """
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] > 1 and np.all((y == 0) | (y == 1)):
        y = y.argmax(axis=1)
    y = y.reshape(len(y), -1)
    rng = np.random.default_rng(seed)
    classes = y.shape[1] == 1 and y.dtype.kind in "biu" or (y.dtype.kind == "f" and y.shape[1] == 1 and np.all(y == np.round(y)))
    if not classes:
        return np.sort(rng.permutation(len(y))[: len(y) // 2])
    keys = y[:, 0]
    chosen = []
    for value in np.unique(keys):
        members = rng.permutation(np.flatnonzero(keys == value))
        chosen.append(members[: (len(members) + rng.integers(0, 2)) // 2])
    return np.sort(np.concatenate(chosen))


def validation_given(data: Any) -> bool:
    """Whether `data` holds its own x_val / y_val (else `split_data` splits x_test)."""
    if isinstance(data, (str, os.PathLike)) and os.path.isfile(os.fspath(data)):
        with np.load(os.fspath(data), allow_pickle=False) as npz:
            return "x_val" in npz.files and "y_val" in npz.files
    if isinstance(data, dict):
        return "x_val" in data and "y_val" in data
    return getattr(data, "x_val", None) is not None and getattr(data, "y_val", None) is not None


def memorised_validation(val_score: float, test_score: float, *, n_val: int, n_test: int) -> str | None:
    """A warning when the accuracy on the given x_val is far above the test accuracy.

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
        f"The model scores {100 * val_score:.1f}% on x_val but {100 * test_score:.1f}% on x_test: it was "
        "probably trained on the x_val examples, so accuracy drops measured on them say little about new data. "
        "Pass x_val / y_val held out from training, or leave them out (optimize then selects on half of x_test)."
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


def check_storage(url: str | None, output_dir: str) -> None:
    """Refuses, before any work, a study storage optimize could not open or write.

    `None` (the journal in `output_dir`), a `.journal` path or `journal:PATH`:
    its folder must exist (or be creatable) and be writable. A database URL
    (`sqlite:///`, `postgresql://`, `mysql://` ...): its scheme must parse and
    its driver be installed; sqlite's folder must be writable; a server must
    answer within 10 s.

    Raises:
        tfopt.errors.InvalidArgumentError: what is wrong with the storage and how to fix it.
    """
    if url is not None and not isinstance(url, str):
        raise InvalidArgumentError(f"storage must be a URL string or None. Received: {type(url).__name__}.")
    if url is None or url.endswith(".journal") or url.startswith("journal:"):
        path = os.path.join(output_dir, "study.journal") if url is None else url.removeprefix("journal:")
        _writable_folder(os.path.dirname(os.path.abspath(path)) or ".", f"the study journal {path!r}")
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    hint = "Expected e.g. sqlite:///study.db or postgresql://user:password@host/db, or leave --storage out."
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise InvalidArgumentError(f"storage {url!r} is not a database URL. {hint}") from None
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:":
            _writable_folder(os.path.dirname(os.path.abspath(database)) or ".", f"the sqlite file {database!r}")
        return
    from tfopt.search.storage import _driver

    try:
        engine = create_engine(_driver(url), connect_args=_timeout(parsed.get_backend_name()))
    except (NoSuchModuleError, ModuleNotFoundError, ImportError) as err:
        raise InvalidArgumentError(
            f"storage {url!r}: no driver for {parsed.drivername!r} is installed ({err}). Install it "
            "(psycopg2-binary for PostgreSQL, pymysql for MySQL), or use a sqlite:/// or journal storage."
        ) from None
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as err:  # noqa: BLE001 - any failure to reach the server is one user-facing error
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise InvalidArgumentError(
            f"storage {parsed.render_as_string(hide_password=True)!r} cannot be reached: {first}. Check that the "
            "server runs and the URL, user and password are right, or leave --storage out (a journal file in --output)."
        ) from None
    finally:
        engine.dispose()


def _timeout(backend: str) -> dict[str, Any]:
    return {"connect_timeout": 10} if backend in ("postgresql", "mysql") else {}


def _writable_folder(folder: str, what: str) -> None:
    """`folder` (or, when it does not exist yet, the nearest folder above it) takes a new file."""
    import tempfile

    existing = folder
    while not os.path.isdir(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise InvalidArgumentError(
            f"{what} cannot be written: {existing!r} takes no new file ({err.strerror or err}). "
            "Choose a folder you can write to."
        ) from None
