"""The one seam that knows Keras 3 from tf_keras (Keras 2), and loads tfmot lazily.

TensorFlow >= 2.16 ships Keras 3 as `tf.keras`; tfmot 0.8 only understands
`tf_keras`. Everything in tfopt that needs to tell the two apart, copy a model,
load a model file or import tfmot goes through this module, so the rest of the
package never imports `tf_keras` or tfmot at module level.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
import subprocess
import sys
import zipfile
from typing import Any

from tfopt.errors import (
    InvalidArgumentError,
    InvalidTypeError,
    MissingDependencyError,
    MissingFileError,
    TfoptError,
    UnsafeModelError,
    UnsupportedModelError,
)

KERAS3 = "keras3"
TF_KERAS = "tf_keras"


def keras_flavor(model: Any) -> str:
    """Returns `"keras3"` or `"tf_keras"` for a Keras model, without importing either.

    Raises:
        TypeError: if `model` is not a Keras model of either flavour.
    """
    for klass in type(model).__mro__:
        module = klass.__module__ or ""
        name = klass.__name__
        if name == "Model" and module.startswith("tf_keras"):
            return TF_KERAS
        if name == "Model" and module.startswith("keras"):
            return KERAS3
    raise InvalidTypeError(
        "Expected a Keras model (keras.Model from Keras 3, or tf_keras.Model). "
        f"Received: an object of type {type(model).__module__}.{type(model).__qualname__}. "
        "Pass a built keras.Model, or a path to a .keras / .h5 file or SavedModel folder."
    )


def is_keras_model(obj: Any) -> bool:
    """True when `obj` is a Keras 3 or tf_keras model."""
    try:
        keras_flavor(obj)
    except TypeError:
        return False
    return True


def keras_module(flavor: str):
    """Returns the `keras` (Keras 3) or `tf_keras` module for a flavour name."""
    if flavor == KERAS3:
        return importlib.import_module("keras")
    if flavor == TF_KERAS:
        from tfopt import _legacy

        return _legacy.tf_keras_module()
    raise InvalidArgumentError(f"Unknown Keras flavour {flavor!r}; expected 'keras3' or 'tf_keras'.")


def keras_of(model: Any):
    """The Keras module (`keras` or `tf_keras`) that built `model`."""
    return keras_module(keras_flavor(model))


def clone_model(model: Any):
    """A new model with the same architecture and a copy of the weights.

    The caller's model is never touched: tfopt transforms always work on a clone.
    Subclassed models, which `clone_model` cannot copy, are rebuilt from their
    config when they have one.
    """
    keras = keras_of(model)
    try:
        clone = keras.models.clone_model(model)
    except (ValueError, TypeError, NotImplementedError) as err:
        raise UnsupportedModelError(
            f"Cannot copy model {model.name!r} of type {type(model).__name__}: {err}. "
            "tfopt works on a copy so it never changes your model; give the subclassed "
            "model get_config/from_config, or build it with the functional API."
        ) from err
    if not clone.built and model.built:
        clone.build(model.inputs[0].shape if hasattr(model, "inputs") and model.inputs else None)
    clone.set_weights(model.get_weights())
    return clone


def load_model(path: str | os.PathLike, *, safe_mode: bool = True, custom_objects: dict | None = None):
    """Loads a Keras model file with the Keras that wrote it, refusing files that would run code.

    `.keras` archives and `.h5` files written by Keras 3 load as Keras 3 models;
    those written by tf_keras (Keras 2; `keras_version` 2.x in the file's
    metadata), and SavedModel folders with Keras metadata, load as tf_keras
    models. The model comes back uncompiled.

    With `safe_mode=True` (the default) nothing stored in the file runs: before
    any Keras deserializes it, the file's configs are read as JSON and the load
    is refused when they hold a `Lambda` layer (Python bytecode), a tf_keras
    `TFOpLambda` calling anything but pure TensorFlow math, a `ClassMethod`
    layer, or a class from a module outside Keras / tfopt that is not
    registered in this process (loading would import that module). This covers
    `.h5` files and SavedModel folders, which Keras' own `safe_mode` does not.
    Pass `safe_mode=False` (CLI: `--unsafe`) only for files you trust.

    SavedModel folders: `tfopt.convert(folder)` hands the folder to the TFLite
    converter, which reads the TensorFlow graph and runs no Python from the
    folder, so converting needs no opt-in. Loading one here rebuilds Keras
    layers from its `keras_metadata.pb` (where Lambda bytecode lives) and is
    checked like any other file; a SavedModel without Keras metadata is refused
    with a pointer to `tfopt.convert`.

    Args:
        path: a `.keras` / `.h5` / `.hdf5` file, or a SavedModel folder written by tf_keras.
        safe_mode: refuse models that would run code from the file. Defaults to `True`.
        custom_objects: name -> class or function the file refers to (e.g. tfmot wrappers in a
            tf_keras `.h5`); these are code you pass, so they count as safe. Defaults to `None`.

    Returns:
        A `keras.Model` (Keras 3 files) or `tf_keras.Model` (tf_keras files).

    Raises:
        MissingFileError: if the path does not exist.
        InvalidArgumentError: if the file is not a Keras model file (empty, text,
            truncated, weights only) or Keras cannot rebuild it.
        UnsafeModelError: with `safe_mode=True`, when loading would run code; the
            message names the layers.

    Example:

    >>> import keras, os, tempfile
    >>> from tfopt import _keras
    >>> path = os.path.join(tempfile.mkdtemp(), "m.keras")
    >>> keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(path)
    >>> _keras.keras_flavor(_keras.load_model(path))
    'keras3'
    """
    if not isinstance(safe_mode, bool):
        raise InvalidTypeError(f"safe_mode must be True or False. Received: safe_mode={safe_mode!r}.")
    info = read_model_file(path)
    if safe_mode:
        problems = list(dict.fromkeys(
            unsafe_objects(info.configs, is_registered=_registry(info.flavor, custom_objects or {}))
        ))
        if problems:
            raise UnsafeModelError(
                f"Refusing to load {info.path!r}: it would run code stored in the file: {'; '.join(problems[:8])}"
                + (f" (and {len(problems) - 8} more)" if len(problems) > 8 else "")
                + ". Load it only if you trust its author: pass safe_mode=False (CLI: --unsafe)."
            )
    try:
        if info.flavor == TF_KERAS:
            from tfopt._legacy import loading

            return loading.load_tf_keras(info.path, safe_mode=safe_mode, custom_objects=custom_objects)
        import keras

        return keras.models.load_model(info.path, safe_mode=safe_mode, compile=False, custom_objects=custom_objects)
    except TfoptError:
        raise
    except Exception as err:  # noqa: BLE001 - Keras raises many types for a file it cannot rebuild
        name = "tf_keras" if info.flavor == TF_KERAS else "Keras 3"
        raise InvalidArgumentError(
            f"Could not load {info.path!r} as a {name} model ({info.kind} file): {_first_line(err)}. "
            "Custom layers must be registered (keras.saving.register_keras_serializable) before loading."
        ) from err


@dataclasses.dataclass(frozen=True)
class ModelFile:
    """What a model file holds, read without deserializing it.

    Attributes:
        path: the path as given.
        kind: `"keras"` (a .keras zip), `"h5"` or `"savedmodel"` (a folder).
        flavor: `"keras3"` or `"tf_keras"`, from the file's `keras_version`.
        keras_version: the version string the file records (`""` when absent).
        configs: the JSON configs Keras would deserialize.
    """

    path: str
    kind: str
    flavor: str
    keras_version: str
    configs: tuple


def read_model_file(path: str | os.PathLike) -> ModelFile:
    """Reads a model file's metadata and configs as JSON; nothing in it runs.

    Raises:
        MissingFileError: if the path does not exist.
        InvalidArgumentError: if it is not a .keras / .h5 file or a SavedModel folder with Keras metadata.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MissingFileError(
            f"Model file not found: {path!r}. Pass the path of a .keras or .h5 file, or a SavedModel folder."
        )
    if os.path.isdir(path):
        from tfopt._legacy import loading

        return ModelFile(path, "savedmodel", TF_KERAS, "", tuple(loading.savedmodel_configs(path)))
    if path.endswith(".keras"):
        return _read_keras_zip(path)
    if path.endswith(_H5_SUFFIXES):
        return _read_h5(path)
    raise InvalidArgumentError(
        f"Unsupported model file {path!r}: expected a .keras or .h5 file or a SavedModel folder "
        "(or a .tflite file where a flatbuffer is accepted)."
    )


_H5_SUFFIXES = (".h5", ".hdf5")
_MAX_CONFIG_BYTES = 256 * 2**20  # a model's JSON config is kilobytes to a few megabytes; more is a zip bomb


def _not_a_model(path: str, reason: str, expected: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"not a Keras model file: {path!r} ({reason}). Expected {expected}.")


def _read_keras_zip(path: str) -> ModelFile:
    expected = "a .keras archive written by model.save('model.keras')"
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            for name in ("config.json", "metadata.json"):
                if name in names and archive.getinfo(name).file_size > _MAX_CONFIG_BYTES:
                    raise _not_a_model(path, f"its {name} claims {archive.getinfo(name).file_size} bytes", expected)
            raw_config = archive.read("config.json") if "config.json" in names else None
            raw_meta = archive.read("metadata.json") if "metadata.json" in names else b"{}"
    except TfoptError:
        raise
    except Exception as err:  # noqa: BLE001 - zipfile/zlib raise many types on damaged archives
        size = os.path.getsize(path)
        raise _not_a_model(path, f"{size} bytes, not a readable zip archive: {_first_line(err)}", expected) from err
    if raw_config is None:
        raise _not_a_model(path, "the archive has no config.json", expected)
    config, meta = _json(raw_config, path, expected), _json(raw_meta, path, expected)
    if not isinstance(config, dict) or not isinstance(meta, dict):
        raise _not_a_model(path, "config.json or metadata.json is not a JSON object", expected)
    version = str(meta.get("keras_version") or "")
    legacy = version.startswith("2.") or str(config.get("module") or "").startswith("tf_keras")
    return ModelFile(path, "keras", TF_KERAS if legacy else KERAS3, version, (config,))


# Reads the two attributes, then every dataset (the weights), in a child process: the HDF5 library can
# loop forever or crash on a damaged file (a fuzzed model_config length hung it in bench/bench_fuzz.py), and
# no signal interrupts C code. Once the child has read every object, Keras' own read in this process cannot
# meet a damaged one.
_H5_CHILD = """
import json, sys
import h5py
try:
    with h5py.File(sys.argv[1], "r") as handle:
        values = [handle.attrs.get("model_config"), handle.attrs.get("keras_version")]
        try:
            handle.visititems(lambda name, item: item[()] if isinstance(item, h5py.Dataset) else None)
            damaged = None
        except Exception as err:
            damaged = f"{type(err).__name__}: {err}"
except Exception as err:
    print(json.dumps({"error": f"{type(err).__name__}: {err}"}))
    sys.exit(0)
text = [v.decode("utf-8", "replace") if isinstance(v, bytes) else (None if v is None else str(v)) for v in values]
print(json.dumps({"model_config": text[0], "keras_version": text[1], "damaged": damaged}))
"""
H5_READ_TIMEOUT = 60.0  # seconds, plus one per 50 MB of file: reading the weights once runs at disk speed


def _read_h5(path: str) -> ModelFile:
    expected = "an .h5 model written by model.save('model.h5')"
    optional_import("h5py", "h5py")
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head != b"\x89HDF\r\n\x1a\n":
        raise _not_a_model(path, f"{size} bytes without the HDF5 signature", expected)
    timeout = H5_READ_TIMEOUT + size / 50e6
    try:
        done = subprocess.run([sys.executable, "-I", "-c", _H5_CHILD, os.path.abspath(path)], capture_output=True,
                              text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as err:
        raise _not_a_model(path, f"reading it with the HDF5 library did not finish in {timeout:.0f} s: the "
                           "file is damaged", expected) from err
    try:
        answer = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None
    except (ValueError, IndexError):
        answer = None
    if not isinstance(answer, dict):
        raise _not_a_model(path, f"the HDF5 library failed on it (exit status {done.returncode})", expected)
    if "error" in answer:
        raise _not_a_model(path, f"{size} bytes, not a readable HDF5 file: {_first_line(answer['error'])}", expected)
    if answer.get("damaged"):
        raise _not_a_model(path, f"damaged: the HDF5 library cannot read its weights ({_first_line(answer['damaged'])})",
                           expected)
    raw_config, version = answer.get("model_config"), answer.get("keras_version") or ""
    if raw_config is None:
        raise _not_a_model(
            path, "no model_config: a weights-only file from save_weights", expected + "; for weights, build the "
            "model and call model.load_weights(path)"
        )
    config = _json(raw_config, path, expected)
    if not isinstance(config, dict):
        raise _not_a_model(path, "model_config is not a JSON object", expected)
    return ModelFile(path, "h5", TF_KERAS if str(version).startswith("2.") else KERAS3, str(version), (config,))


def _json(raw, path: str, expected: str):
    try:
        return json.loads(raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise _not_a_model(path, f"its config is not valid JSON: {_first_line(err)}", expected) from err


def _first_line(err: BaseException) -> str:
    text = _ANSI.sub("", str(err)).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:300]


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

# Roots of modules whose classes a file may name: importing them runs only installed, trusted code.
SAFE_MODULE_ROOTS = frozenset({"keras", "keras_hub", "keras_cv", "keras_nlp", "tf_keras", "tfopt",
                               "tensorflow_model_optimization", "builtins"})
# TensorFlow namespaces a tf_keras TFOpLambda may call: pure math on tensors, no file or process access.
SAFE_TF_NAMESPACES = frozenset({"math", "nn", "linalg", "image", "signal", "bitwise", "__operators__", "dtypes"})
SAFE_TF_FUNCTIONS = frozenset(
    "abs add argmax argmin boolean_mask broadcast_to cast clip_by_norm clip_by_value concat cos cumsum divide einsum "
    "equal exp expand_dims fill gather gather_nd greater greater_equal identity less less_equal linspace log "
    "logical_and logical_not logical_or matmul maximum minimum multiply negative not_equal one_hot ones ones_like "
    "pad pow range rank reduce_all reduce_any reduce_max reduce_mean reduce_min reduce_prod reduce_sum repeat "
    "reshape reverse roll round rsqrt scatter_nd shape sigmoid sign sin size slice sort split sqrt square squeeze "
    "stack stop_gradient strided_slice subtract tanh tensordot tile transpose truediv unstack where zeros "
    "zeros_like argsort floor ceil".split()
)


def _safe_tf_function(name: Any) -> bool:
    if not isinstance(name, str):
        return False
    for prefix in ("compat.v1.", "compat.v2."):
        if name.startswith(prefix):
            name = name[len(prefix):]
    head = name.split(".")[0]
    return (head in SAFE_TF_NAMESPACES and "." in name) or name in SAFE_TF_FUNCTIONS


def unsafe_objects(configs, *, is_registered=None) -> list[str]:
    """Names the objects in model configs (plain JSON) whose loading would run code from the file.

    Pure: reads dicts and lists only. Flags `Lambda` layers and stored Python
    lambdas, tf_keras `TFOpLambda` / `SlicingOpLambda` calling anything outside
    pure TensorFlow math (`SAFE_TF_NAMESPACES`, `SAFE_TF_FUNCTIONS`),
    `ClassMethod` layers, `InstanceMethod` / `InstanceProperty` on private
    attributes, and classes from modules outside `SAFE_MODULE_ROOTS` unless
    `is_registered(registered_name)` says the process already holds them.

    Returns:
        One `"<layer name> (<why>)"` entry per finding, in config order.
    """
    found: list[str] = []

    def label(node: dict) -> str:
        inner = node.get("config")
        name = node.get("name") or (inner.get("name") if isinstance(inner, dict) else None)
        return f"{name!r}" if isinstance(name, str) else f"a {node.get('class_name')}"

    stack = [list(configs)]  # iterative walk: a hostile file cannot exhaust the recursion limit
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(reversed(node))
        elif isinstance(node, dict):
            reason = _unsafe_reason(node, is_registered)
            if reason:
                found.append(f"{label(node)} ({reason})")
            else:
                stack.extend(reversed(list(node.values())))
    return found


def _unsafe_reason(node: dict, is_registered) -> str | None:
    kind = node.get("class_name")
    if not isinstance(kind, str):
        return None
    inner = node.get("config") if isinstance(node.get("config"), dict) else {}
    if kind == "Lambda":
        return "Lambda layer: runs Python code stored in the file"
    if kind == "__lambda__":
        return "a Python lambda stored in the file"
    if kind in ("TFOpLambda", "SlicingOpLambda") and not _safe_tf_function(inner.get("function")):
        return f"{kind} calling tf.{inner.get('function')}, outside the pure TensorFlow math tfopt allows"
    if kind == "ClassMethod":
        return f"ClassMethod layer calling tf.{inner.get('cls_symbol')}.{inner.get('method_name')}"
    if kind in ("InstanceMethod", "InstanceProperty") and str(inner.get("attr_name", "_")).startswith("_"):
        return f"{kind} on the private attribute {inner.get('attr_name')!r}"
    module = node.get("module")
    if isinstance(module, str) and module and module.split(".")[0] not in SAFE_MODULE_ROOTS:
        registered = node.get("registered_name")
        if not (is_registered and isinstance(registered, str) and is_registered(registered)):
            return f"class {kind} from module {module!r}: loading would import and run that module"
    return None


def _registry(flavor: str, custom_objects: dict):
    """`is_registered(name)` for the Keras that will load the file (custom objects the process already holds)."""

    def is_registered(name: str) -> bool:
        if name in custom_objects or name.split(">")[-1] in custom_objects:
            return True
        try:
            return keras_module(flavor).saving.get_registered_object(name) is not None
        except (ImportError, AttributeError):
            return False

    return is_registered


def import_tfmot():
    """Imports tensorflow_model_optimization (via `tfopt._legacy`, the one place that may)."""
    from tfopt import _legacy

    return _legacy.import_tfmot()


def optional_import(module: str, pip_name: str):
    """Imports an optional dependency, or raises ImportError with the pip command."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(f"This feature needs {module}: pip install {pip_name}") from err


def check_same_outputs(a: Any, b: Any, *, input_shape: tuple[int, ...] | None = None, atol: float = 1e-4) -> None:
    """Raises when models `a` and `b` differ on the same random inputs (a rebuilt model must match its source)."""
    import numpy as np

    rng = np.random.default_rng(0)
    shapes = [input_shape] if input_shape is not None else [tuple(int(d or 1) for d in t.shape[1:]) for t in a.inputs]
    xs = [rng.random((2, *s), dtype=np.float32) for s in shapes]
    feed = xs[0] if len(xs) == 1 else xs
    out_a, out_b = a(feed, training=False), b(feed, training=False)
    flat_a = [np.asarray(v) for v in (out_a if isinstance(out_a, (list, tuple)) else [out_a])]
    flat_b = [np.asarray(v) for v in (out_b if isinstance(out_b, (list, tuple)) else [out_b])]
    diff = max(float(np.max(np.abs(x - y))) for x, y in zip(flat_a, flat_b))
    scale = max(float(np.max(np.abs(x))) for x in flat_a)
    if len(flat_a) != len(flat_b) or not np.isfinite(diff) or diff > atol * max(1.0, scale):
        raise InvalidArgumentError(f"The prepared model's outputs differ from {a.name!r} by up to {diff:.3g}; please report this model.")
