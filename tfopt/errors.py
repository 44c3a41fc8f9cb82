"""tfopt's errors: what a user got wrong, what a model or runtime cannot do, and everything else (a bug).

Every error tfopt raises on purpose derives from `TfoptError` and from the
built-in exception a Python user would expect (`ValueError`, `TypeError`, ...),
so `except ValueError` keeps working. The command line turns a `TfoptError`
into one line on stderr and exit status 2; any other exception is a bug in
tfopt and keeps its traceback.

>>> import tfopt
>>> try:
...     tfopt.PruneConfig(target_sparsity=1.5)
... except tfopt.TfoptError as err:
...     print(type(err).__name__, isinstance(err, ValueError))
InvalidArgumentError True
"""

from __future__ import annotations


class TfoptError(Exception):
    """Base of every error tfopt raises on purpose (a user mistake or a limit of a model or runtime)."""


class InvalidArgumentError(TfoptError, ValueError):
    """A value, a path or data the user passed is wrong; the message says what was expected."""


class InvalidTypeError(TfoptError, TypeError):
    """An argument has the wrong type; the message says which types are accepted."""


class MissingFileError(TfoptError, FileNotFoundError):
    """An input file or folder does not exist."""


class UnsupportedModelError(TfoptError, NotImplementedError):
    """The model (or a layer of it) is outside what a technique or exporter supports; the message names it."""


class UnsafeModelError(TfoptError, ValueError):
    """Loading the model file would run code from it (a Lambda layer, a custom object); needs an explicit opt-in."""


class BenchmarkError(TfoptError, RuntimeError):
    """The runtime (LiteRT or TFLite Micro) could not load or run a model; the message names the stage."""


class MissingDependencyError(TfoptError, ImportError):
    """An optional dependency is not installed; the message gives the pip command."""
