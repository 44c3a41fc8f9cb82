"""Makes `keras.models.load_model` find tfopt's layers after `import tfopt`, without importing Keras early.

A model saved with tfopt's wrappers (pruning, clustering, QAT) names its layers
`tfopt>...`; Keras finds them only if the modules that register them were
imported. `import tfopt` must stay cheap (no TensorFlow, no Keras), so instead of
importing them here, `install()` adds a finder that waits for Keras: when
`keras` has been imported (by the user, by TensorFlow, or already was), the
registering modules are imported too. Nothing else changes in the import system.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys

from tfopt.config import keras_layer_modules

# Modules whose import registers tfopt's Keras 3 layers (keras.saving.register_keras_serializable):
# each config class names its own (`Config.keras_layers`).
MODULES: tuple[str, ...] = keras_layer_modules()


def register() -> None:
    """Imports the modules that register tfopt's Keras layers (needs Keras)."""
    for name in MODULES:
        importlib.import_module(name)


class _AfterKeras(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `keras` with the other finders, runs it, then registers tfopt's layers."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "keras":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        self._loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        uninstall()
        register()


_FINDER = _AfterKeras()


def install() -> None:
    """Registers now if Keras is loaded, else once it is."""
    if "keras" in sys.modules:
        register()
    elif _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def uninstall() -> None:
    """Removes the finder (it is needed once)."""
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
