"""The one seam that knows Keras 3 from tf_keras (Keras 2), and loads tfmot lazily.

TensorFlow >= 2.16 ships Keras 3 as `tf.keras`; tfmot 0.8 only understands
`tf_keras`. Everything in tfopt that needs to tell the two apart, copy a model,
load a model file or import tfmot goes through this module, so the rest of the
package never imports `tf_keras` or tfmot at module level.
"""

from __future__ import annotations

import importlib
import os
from typing import Any
from tfopt.errors import InvalidArgumentError, InvalidTypeError, MissingFileError, UnsupportedModelError

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


def load_model(path: str | os.PathLike, *, safe_mode: bool = True):
    """Loads a `.keras` / `.h5` file with Keras 3 (falls back to tf_keras for legacy files).

    `safe_mode=True` (the default) refuses to deserialize Python lambdas, so
    loading a file from someone else cannot run arbitrary code.

    Raises:
        FileNotFoundError: if the path does not exist.
        ValueError: if the file is not a Keras model file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MissingFileError(
            f"Model file not found: {path!r}. Pass the path of a .keras or .h5 file, or a SavedModel folder."
        )
    if os.path.isdir(path):
        raise InvalidArgumentError(
            f"{path!r} is a folder. A SavedModel folder is converted directly by tfopt.convert; "
            "to load a Keras model pass a .keras or .h5 file."
        )
    if not path.endswith((".keras", ".h5", ".hdf5")):
        raise InvalidArgumentError(
            f"Unsupported model file {path!r}: expected a .keras or .h5 file "
            "(or a .tflite file where a flatbuffer is accepted)."
        )
    import keras

    try:
        return keras.models.load_model(path, safe_mode=safe_mode, compile=False)
    except Exception as keras3_error:  # noqa: BLE001 - retried with tf_keras, then re-raised
        if path.endswith(".keras"):
            raise InvalidArgumentError(f"Could not load {path!r} as a Keras model: {keras3_error}") from keras3_error
        from tfopt import _legacy

        tf_keras = _legacy.tf_keras_module()
        try:
            return tf_keras.models.load_model(path, compile=False, safe_mode=safe_mode)
        except Exception as err:  # noqa: BLE001
            raise InvalidArgumentError(
                f"Could not load {path!r} with Keras 3 ({keras3_error}) or tf_keras ({err})."
            ) from err


def import_tfmot():
    """Imports tensorflow_model_optimization (via `tfopt._legacy`, the one place that may)."""
    from tfopt import _legacy

    return _legacy.import_tfmot()


def optional_import(module: str, pip_name: str):
    """Imports an optional dependency, or raises ImportError with the pip command."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"This feature needs {module}: pip install {pip_name}") from err
