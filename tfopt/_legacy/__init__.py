"""Keras 2 (tf_keras) support: the only place in tfopt that imports tf_keras and tfmot.

Everything else reaches tf_keras through `tf_keras_module()` and tfmot through
`import_tfmot()`, both lazy, so `import tfopt` never loads either and never
changes which Keras `tf.keras` resolves to.
"""

from __future__ import annotations

import contextlib
import importlib
import os


def tf_keras_module():
    """The `tf_keras` module (Keras 2), imported on first use."""
    try:
        return importlib.import_module("tf_keras")
    except ImportError as err:
        raise ImportError("Keras 2 models need tf_keras: pip install tf-keras") from err


@contextlib.contextmanager
def _restore_env(name: str):
    before = os.environ.get(name)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def import_tfmot():
    """Imports tensorflow_model_optimization without leaking its global side effects.

    tfmot sets `TF_USE_LEGACY_KERAS=1` when imported, which would make a later
    first touch of `tf.keras` resolve to Keras 2. tfopt restores the variable.
    """
    import tensorflow as tf

    # Resolve tf.keras now, under the user's own setting, so the variable tfmot sets
    # while it imports cannot flip it to Keras 2 (tfmot itself then picks tf_keras).
    getattr(tf.keras, "Model", None)
    with _restore_env("TF_USE_LEGACY_KERAS"):
        try:
            return importlib.import_module("tensorflow_model_optimization")
        except ImportError as err:
            raise ImportError(
                "This feature needs TensorFlow Model Optimization: pip install 'tensorflow-model-optimization>=0.8.1'"
            ) from err
