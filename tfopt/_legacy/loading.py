"""Loading tf_keras (Keras 2) model files without running code from them.

`tfopt._keras.load_model` reads a file's metadata, decides its flavour, checks its
configs for anything that would run code (`tfopt._keras.unsafe_objects`) and only
then hands a tf_keras file to `load_tf_keras` here. This module adds what only
tf_keras files have: the Keras metadata of a SavedModel folder
(`keras_metadata.pb`), and the loading call itself.
"""

from __future__ import annotations

import json
import os
from typing import Any

from tfopt.errors import InvalidArgumentError

KERAS_METADATA = "keras_metadata.pb"


def savedmodel_configs(path: str) -> list[dict[str, Any]]:
    """The layer configs stored in a tf_keras SavedModel folder's `keras_metadata.pb`.

    Raises:
        InvalidArgumentError: when the folder is no SavedModel, or a SavedModel without Keras
            metadata (a plain TensorFlow graph: `tfopt.convert(folder)` converts it directly).
    """
    if not os.path.isfile(os.path.join(path, "saved_model.pb")):
        raise InvalidArgumentError(
            f"{path!r} is a folder without saved_model.pb: not a SavedModel. Pass a .keras or .h5 file, "
            "or a SavedModel folder."
        )
    metadata_path = os.path.join(path, KERAS_METADATA)
    if not os.path.isfile(metadata_path):
        raise InvalidArgumentError(
            f"{path!r} is a SavedModel without Keras metadata ({KERAS_METADATA}), so it cannot be loaded as a "
            "Keras model. Convert it directly with tfopt.convert(folder) (or `tfopt convert FOLDER`), which reads "
            "the TensorFlow graph and runs no Python from the folder."
        )
    from tfopt._legacy import tf_keras_module

    tf_keras_module()  # a clear error naming tfopt[legacy] when tf_keras is missing
    from tf_keras.protobuf import saved_metadata_pb2  # the schema of keras_metadata.pb

    metadata = saved_metadata_pb2.SavedMetadata()
    try:
        with open(metadata_path, "rb") as handle:
            metadata.ParseFromString(handle.read())
        return [json.loads(node.metadata) for node in metadata.nodes if node.metadata]
    except Exception as err:  # noqa: BLE001 - a damaged protobuf or JSON: the folder is not a usable model
        raise InvalidArgumentError(
            f"not a Keras model file: {metadata_path!r} cannot be read ({type(err).__name__}). "
            "Save the model again with model.save(...)."
        ) from err


def load_tf_keras(path: str, *, safe_mode: bool, custom_objects: dict | None = None):
    """Loads a tf_keras `.keras` / `.h5` file or SavedModel folder, uncompiled.

    Call it only after `tfopt._keras` has checked the file's configs: tf_keras'
    own `safe_mode` does not cover `.h5` files or SavedModel folders.
    """
    from tfopt._legacy import tf_keras_module

    tf_keras = tf_keras_module()
    return tf_keras.models.load_model(path, compile=False, safe_mode=safe_mode, custom_objects=custom_objects)
