"""Optional dependencies of tfopt: which pip extra installs each, and the error that says so.

The core install (`pip install tfopt`) holds what a Keras 3 user needs. Keras 2
(tf_keras) models and tfmot's wrappers need the `[legacy]` extra; this module
names it in one place, so every "not installed" message gives the same command.

>>> from tfopt import _extras
>>> _extras.install_command("legacy")
'pip install "tfopt[legacy]"'
"""

from __future__ import annotations

import importlib
from types import ModuleType

from tfopt.errors import MissingDependencyError

# Module -> the extra that installs it.
EXTRA_OF = {
    "tf_keras": "legacy",
    "tensorflow_model_optimization": "legacy",
    "litert_quantizer": "quantizer",
    "tflite_micro": "micro",
    "tf2onnx": "onnx",
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "mlxtend": "demo",
    "sklearn": "demo",
    "matplotlib": "plot",
}


def install_command(extra: str) -> str:
    """The pip command that installs one extra, quoted for every shell: `pip install "tfopt[legacy]"`."""
    return f'pip install "tfopt[{extra}]"'


def missing(module: str, feature: str) -> MissingDependencyError:
    """The error for a missing optional module: what needs it, which module, and the pip command.

    Args:
        module: the importable name that is missing, e.g. `"tf_keras"`.
        feature: what the user asked for, e.g. `"Keras 2 (tf_keras) models"`.

    Returns:
        A `tfopt.errors.MissingDependencyError` (an `ImportError`) to raise.
    """
    extra = EXTRA_OF.get(module)
    how = install_command(extra) if extra else f"pip install {module}"
    return MissingDependencyError(f"{module} is not installed (needed for {feature}). Install it with: {how}")


def require(module: str, feature: str) -> ModuleType:
    """Imports an optional module, or raises `missing(...)` from the ImportError.

    When the module is installed but an optional module it needs is not (tfmot without
    tf_keras), the error names the one that is missing. Any other ImportError from inside
    the module propagates unchanged.

    Example:

    >>> from tfopt import _extras
    >>> _extras.require("json", "reports").__name__
    'json'
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        absent = (err.name or module).split(".")[0]
        if absent != module.split(".")[0] and absent not in EXTRA_OF:
            raise  # the module is there but one of ITS imports failed: a different problem, keep the traceback
        raise missing(absent, feature) from err
