"""Configs in, new model out: `apply` runs a recipe of configs; the verbs are `apply` with one config.

The registry below maps each config's technique to the function that does the
work (in `tfopt.compress` or `tfopt.export`). Nothing here implements a
technique: this module validates through the configs, strips wrappers between
steps, feeds `data` to the steps that train, and returns the last step's result.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from tfopt import config as C
from tfopt.errors import InvalidArgumentError, InvalidTypeError

# technique -> (module, function). Each function takes the model first and the config's fields as keywords.
_HANDLERS = {
    "prune": ("tfopt.compress.prune", "prune"),
    "cluster": ("tfopt.compress.cluster", "cluster"),
    "qat": ("tfopt.compress.qat", "qat"),
    "prune_channels": ("tfopt.compress.channels", "prune_channels"),
    "decompose": ("tfopt.compress.lowrank", "decompose"),
    "distill": ("tfopt.compress.distill", "distill"),
    "fine_tune": ("tfopt.compress.finetune", "fine_tune"),
    "ptq": ("tfopt.export.convert", "convert"),
}
# Modules whose training wrappers `strip` removes and `summary` describes: (module, strip, summary).
_WRAPPERS = (
    ("tfopt.compress.cluster", "strip_clustering", "clustering_summary"),
    ("tfopt.compress.prune", "strip_pruning", "pruning_summary"),
    ("tfopt.compress.qat", "strip_qat", "qat_summary"),
)
# Steps that train the model they get, so wrappers from the step before must stay on.
_TRAINING_STEPS = ("fine_tune", "distill")


def _handler(technique: str) -> Callable:
    module, name = _HANDLERS[technique]
    return getattr(importlib.import_module(module), name)


def _call(function: Callable, *args: Any, options: dict[str, Any]):
    """Calls a handler with the options it takes; a non-default option it doesn't take is an error."""
    parameters = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return function(*args, **options)
    taken = {k: v for k, v in options.items() if k in parameters}
    return function(*args, **taken)


def _check_configs(configs: Sequence[Any]) -> list[C.Config]:
    if not configs:
        raise InvalidArgumentError(
            "apply() needs at least one config, e.g. tfopt.apply(model, tfopt.PruneConfig(target_sparsity=0.8))."
        )
    checked = []
    for i, config in enumerate(configs):
        if isinstance(config, dict):
            config = C.Config.from_dict(config)
        if not isinstance(config, C.Config) or type(config) is C.Config:
            raise InvalidTypeError(
                f"apply() takes tfopt configs ({', '.join(k.__name__ for k in C.CONFIGS.values())}) or their "
                f"to_dict() output. Received at position {i}: {type(config).__name__}."
            )
        checked.append(config)
    for i, config in enumerate(checked[:-1]):
        if config.technique == "ptq":
            raise InvalidArgumentError(
                f"PTQConfig makes a .tflite, so it must be the last step of a recipe; it is step {i + 1} of {len(checked)}."
            )
    return checked


def _xy(data: Any) -> tuple[Any, Any]:
    """(x, y) from a tuple or from a mapping with x_train / y_train (an .npz file's arrays)."""
    if data is None:
        return None, None
    if isinstance(data, dict) or hasattr(data, "files"):
        if "x_train" not in data:
            raise InvalidArgumentError(
                f"data as a mapping needs x_train (and y_train to train). Received keys: {sorted(data)}."
            )
        return data["x_train"], data["y_train"] if "y_train" in data else None
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data[0], data[1]
    raise InvalidTypeError(
        "data must be (x, y) arrays or a mapping with x_train and y_train (e.g. np.load('data.npz')). "
        f"Received: {type(data).__name__}."
    )


def _needs_data(config: C.Config, x: Any, y: Any) -> None:
    trains = config.technique == "fine_tune" or (config.technique == "distill" and config.epochs)
    if trains and (x is None or y is None):
        raise InvalidArgumentError(
            f"{type(config).__name__} trains the model, so apply() needs data=(x_train, y_train). Received: data=None."
        )


def apply(model: Any, *configs: Any, data: Any = None, teacher: Any = None):
    """Runs a recipe: each config's technique, in order, each on the result of the one before.

    `tfopt.apply(model, tfopt.PruneConfig(target_sparsity=0.8))` is
    `tfopt.prune(model, target_sparsity=0.8)`: the verbs are `apply` with one
    config. A recipe chains techniques, with fine-tuning as a step of its own:

    ```python
    recipe = [tfopt.PruneConfig(target_sparsity=0.8), tfopt.FineTuneConfig(epochs=2),
              tfopt.ClusterConfig(num_clusters=16, preserve_sparsity=True), tfopt.FineTuneConfig(epochs=1),
              tfopt.PTQConfig(mode="int8")]
    result = tfopt.apply(model, *recipe, data=(x_train, y_train))   # a ConversionResult
    ```

    Pruning and clustering wrappers stay on through the training steps after
    them (`FineTuneConfig`, `DistillConfig`) and are stripped before any other
    step. A polynomial `PruneConfig` without `end_step` followed by a training
    step reaches its target after two thirds of that step's batches, so the
    rest recovers at full sparsity. The caller's model is never changed. Configs may also be given as their
    `to_dict()` output, so a stored recipe replays as it ran.

    Args:
        model: a Keras 3 or tf_keras model.
        *configs: `PruneConfig`, `ClusterConfig`, `QATConfig`, `ChannelPruneConfig`,
            `LowRankConfig`, `DistillConfig`, `FineTuneConfig`, `PTQConfig` (last
            only), or dicts from their `to_dict()`.
        data: `(x_train, y_train)` or a mapping with `x_train` / `y_train`; used
            to fine-tune, distill, calibrate int8 conversion, and rank channels.
            Defaults to `None`.
        teacher: the teacher for `DistillConfig`. Defaults to `None`: the model
            given to `apply`, as it was before any step.

    Returns:
        The last step's result: a Keras model for most steps, a
        `ChannelPruneResult` when a recipe is one `ChannelPruneConfig`, a
        `Distiller` for a `DistillConfig` without data, or a `ConversionResult`
        for `PTQConfig`.

    Raises:
        InvalidTypeError: something other than a config.
        InvalidArgumentError: an empty recipe, `PTQConfig` before the end, or a
            training step without data.

    Example:

    >>> import keras, tfopt
    >>> model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(64, name="a"), keras.layers.Dense(4)])
    >>> small = tfopt.apply(model, tfopt.LowRankConfig(rank=4, include="a"))
    >>> small.count_params() < model.count_params()
    True
    """
    steps = _check_configs(configs)
    x, y = _xy(data)
    for config in steps:
        _needs_data(config, x, y)
    steps = _fit_prune_schedules(steps, x)
    original, current, result = model, model, model
    for i, config in enumerate(steps):
        if i > 0 and config.technique not in _TRAINING_STEPS:
            current = _strip_if_wrapped(current)
        if config.technique in _TRAINING_STEPS and current is original:
            from tfopt import _keras

            current = _keras.clone_model(original)  # training steps train in place: never the caller's model
        result = _run(config, current, x=x, y=y, teacher=original if teacher is None else teacher, last=i == len(steps) - 1)
        current = getattr(result, "model", result) if config.technique == "prune_channels" else result
        if config.technique == "distill" and x is not None and config.epochs:
            current = result
    return result


def _fit_prune_schedules(steps: list[C.Config], x: Any) -> list[C.Config]:
    """A polynomial `PruneConfig` without `end_step` ends its ramp within the training step after it.

    The default ramp (a fixed number of steps) knows nothing of the data; in a
    recipe the fine-tuning that follows is known, so the ramp ends after two
    thirds of its steps and the last third recovers at the target sparsity.
    """
    fitted = list(steps)
    for i, config in enumerate(steps[:-1]):
        after = steps[i + 1]
        if config.technique != "prune" or config.schedule != "polynomial" or config.end_step is not None or config.m_by_n:
            continue
        if after.technique not in _TRAINING_STEPS or x is None or not getattr(after, "epochs", 0):
            continue
        first = next(iter(x.values())) if isinstance(x, dict) else x[0] if isinstance(x, (list, tuple)) else x
        n = len(first) if hasattr(first, "__len__") else 0
        if not n:
            continue
        from tfopt.compress.schedules import ramp_end_step

        train_steps = after.epochs * -(-n // after.batch_size)
        fitted[i] = dataclasses.replace(config, end_step=ramp_end_step(train_steps, begin_step=config.begin_step))
    return fitted


def _run(config: C.Config, model: Any, *, x: Any, y: Any, teacher: Any, last: bool):
    options = config.options()
    technique = config.technique
    if technique == "prune_channels":
        if options["importance"] == "activation":
            options["data"] = x  # the only importance measured on data
        result = _call(_handler(technique), model, options=options)
        return result if last else result.model
    if technique == "cluster" and x is not None:
        options["batchnorm_data"] = x
    if technique == "fine_tune":
        return _call(_handler(technique), model, (x, y), options=options)
    if technique == "distill":
        return _distill(model, teacher, options, x=x, y=y)
    if technique == "ptq":
        return _convert(model, options, x=x)
    return _call(_handler(technique), model, options=options)


def _distill(student: Any, teacher: Any, options: dict[str, Any], *, x: Any, y: Any):
    train = {k: options.pop(k) for k in ("epochs", "batch_size", "learning_rate")}
    distiller = _call(_handler("distill"), student, teacher, options=options)
    if x is None or not train["epochs"]:
        return distiller
    from tfopt.compress import finetune

    finetune.fit_distiller(distiller, (x, y), **train)
    return distiller.student


def _convert(model: Any, options: dict[str, Any], *, x: Any):
    convert = _handler("ptq")
    if options["mode"] in ("int8", "int16x8") and x is not None:
        from tfopt.export.calibration import calibration_data

        options["calibration"] = calibration_data(x, model=model)
    defaults = {f.name: f.default for f in dataclasses.fields(C.PTQConfig)}
    parameters = inspect.signature(convert).parameters
    unsupported = [k for k, v in options.items() if k not in parameters and v != defaults.get(k)]
    if unsupported:
        raise InvalidArgumentError(f"This tfopt.convert does not take {unsupported}; upgrade tfopt or drop them.")
    return _call(convert, model, options=options)


def _wrapper_module(model: Any):
    """The first (module, strip name, summary name) whose wrappers `model` carries, or None."""
    for module_name, strip_name, summary_name in _WRAPPERS:
        module = importlib.import_module(module_name)
        has = getattr(module, "has_wrappers", None)
        if has is not None and has(model):
            return module, strip_name, summary_name
    return None


def _strip_if_wrapped(model: Any):
    found = _wrapper_module(model)
    if found is None or found[1] == "strip_qat":
        return model  # QAT wrappers carry the quantization ranges into conversion
    return strip(model)


def strip(model: Any, *, batchnorm_data: Any = None):
    """Removes tfopt's training wrappers (pruning, clustering, QAT): a plain Keras model again.

    Use it after fine-tuning a model from `tfopt.prune`, `tfopt.cluster` or
    `tfopt.qat` (or one loaded with `tfopt.load_model`), before saving it for
    deployment or converting it. Zeros (pruning) and shared values (clustering)
    are written into the kernels; a model pruned then clustered is stripped of
    both. The result keeps the Keras flavour of the model given, and is not
    compiled. QAT models convert to int8 as they are; strip them only to get a
    float model back.

    Args:
        model: a model carrying tfopt wrappers. Not modified.
        batchnorm_data: inputs used to re-estimate BatchNorm statistics after
            stripping clustering. Defaults to `None` (statistics kept).

    Returns:
        A new Keras model without wrappers.

    Raises:
        InvalidArgumentError: the model carries no tfopt wrappers.

    Example:

    >>> import keras, warnings, tfopt
    >>> warnings.simplefilter("ignore")
    >>> layers = [keras.Input((8,)), keras.layers.Dense(16, name="hidden"), keras.layers.Dense(4, name="out")]
    >>> pruned = tfopt.prune(keras.Sequential(layers), target_sparsity=0.5, include=["hidden"])
    >>> plain = tfopt.strip(pruned)
    >>> [layer.name for layer in plain.layers]
    ['hidden', 'out']
    """
    found = _wrapper_module(model)
    if found is None:
        raise InvalidArgumentError(
            f"Model {getattr(model, 'name', model)!r} carries no pruning, clustering or QAT wrappers, so there is "
            "nothing to strip. Pass the model returned by tfopt.prune, tfopt.cluster or tfopt.qat."
        )
    module, strip_name, _ = found
    stripped = _call(getattr(module, strip_name), model, options={"batchnorm_data": batchnorm_data})
    return strip(stripped, batchnorm_data=batchnorm_data) if _wrapper_module(stripped) is not None else stripped


def summary(model: Any):
    """What tfopt's wrappers in a model are doing: sparsity, clusters, or quantized layers, per layer.

    Args:
        model: a model from `tfopt.prune`, `tfopt.cluster` or `tfopt.qat`.

    Returns:
        A `PruningSummary`, `ClusteringSummary` or `QATSummary` (each with
        `summary()` for a table and `to_dict()`).

    Raises:
        InvalidArgumentError: the model carries no tfopt wrappers.

    Example:

    >>> import keras, warnings, tfopt
    >>> warnings.simplefilter("ignore")
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, name="hidden"), keras.layers.Dense(4)])
    >>> [layer.name for layer in tfopt.summary(tfopt.prune(model, include=["hidden"])).layers]
    ['hidden']
    """
    found = _wrapper_module(model)
    if found is None:
        raise InvalidArgumentError(
            f"Model {getattr(model, 'name', model)!r} carries no tfopt wrappers; summary() describes models from "
            "tfopt.prune, tfopt.cluster or tfopt.qat. For parameters, MACs and memory use tfopt.profile."
        )
    module, _, summary_name = found
    return getattr(module, summary_name)(model)


def load_model(path: Any, *, safe_mode: bool = True, custom_objects: dict[str, Any] | None = None):
    """Loads a Keras model file (.keras, .h5 or a SavedModel folder; Keras 3 or tf_keras), with tfopt's wrappers.

    Loading is safe by default: the file's configuration is read as plain data
    before any Keras deserializer runs, and a file that would run code when
    loaded (a Lambda layer, a stored lambda, a class from a module that is not
    Keras, tfopt or a class you pass) is refused, with the layer named. The
    flavour comes from the file, so a tf_keras `.keras` file loads with tf_keras.
    A SavedModel folder loads only through its Keras metadata; `tfopt.convert`
    converts any SavedModel folder directly, running no Python from it.

    Args:
        path: a `.keras` or `.h5` file, or a SavedModel folder saved by Keras.
        safe_mode: refuse files that would run code. Pass `False` only for files
            you trust. Defaults to `True`.
        custom_objects: your own layer classes by name; they count as safe.
            Defaults to `None`.

    Returns:
        The model, in the Keras flavour that saved it, not compiled.

    Raises:
        MissingFileError: no such file.
        InvalidArgumentError: not a Keras model file.
        UnsafeModelError: the file would run code and `safe_mode` is on.

    Example:

    >>> import keras, os, tempfile, tfopt
    >>> path = os.path.join(tempfile.mkdtemp(), "m.keras")
    >>> keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(path)
    >>> tfopt.load_model(path).output_shape
    (None, 2)
    """
    from tfopt import _keras

    objects = dict(custom_objects or {})
    if _keras.read_model_file(path).flavor == _keras.TF_KERAS:
        from tfopt._legacy.objects import tfmot_custom_objects

        objects = {**tfmot_custom_objects(), **objects}  # pruned / clustered / QAT tf_keras files
    return _keras.load_model(path, safe_mode=safe_mode, custom_objects=objects or None)


# The verbs: `apply` with one config. Each returns exactly what `apply(model, Config(...))` returns.


def prune(
    model: Any,
    *,
    target_sparsity: float | dict[str, float] = 0.8,
    schedule: str = "polynomial",
    begin_step: int = 0,
    end_step: int | None = None,
    frequency: int | None = None,
    include: Any = None,
    exclude: Any = None,
    m_by_n: tuple[int, int] | None = None,
):
    """Magnitude pruning: wraps the selected layers so a plain `model.fit` prunes them to `target_sparsity`.

    `tfopt.apply(model, tfopt.PruneConfig(...))` with keywords; the options are
    described in `PruneConfig` and `tfopt.compress.prune.prune`. Fine-tune the
    returned model with your own optimizer and callbacks (no callback is
    needed), then `tfopt.strip` it.

    Returns:
        A new Keras model (the caller's is not changed) in the flavour given.

    Example:

    >>> import keras, warnings, tfopt
    >>> warnings.simplefilter("ignore")
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, name="hidden"), keras.layers.Dense(4)])
    >>> pruned = tfopt.prune(model, target_sparsity=0.5, include=["hidden"])
    >>> [layer.name for layer in tfopt.summary(pruned).layers]
    ['hidden']
    """
    options = dict(locals())
    return apply(options.pop("model"), C.PruneConfig(**options))


def cluster(
    model: Any,
    *,
    num_clusters: int = 16,
    init: str = "kmeans++",
    per_channel: bool = False,
    preserve_sparsity: bool = False,
    include: Any = None,
    exclude: Any = None,
    batchnorm_data: Any = None,
):
    """Weight clustering: each selected kernel shares `num_clusters` trainable values.

    `tfopt.apply(model, tfopt.ClusterConfig(...), data=batchnorm_data)`; the
    options are described in `ClusterConfig` and `tfopt.compress.cluster.cluster`.
    Fine-tune, then `tfopt.strip`.

    Returns:
        A new Keras model (the caller's is not changed) in the flavour given.

    Example:

    >>> import keras, numpy as np, tfopt
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(32, name="hidden"), keras.layers.Dense(4)])
    >>> plain = tfopt.strip(tfopt.cluster(model, num_clusters=4, include=["hidden"]))
    >>> len(np.unique(plain.get_layer("hidden").get_weights()[0])) <= 4
    True
    """
    options = dict(locals())
    model, data = options.pop("model"), options.pop("batchnorm_data")
    return apply(model, C.ClusterConfig(**options), data=None if data is None else (data, None))


def qat(model: Any, *, exclude: Any = None, preserve: str | None = None, ema_decay: float = 0.99):
    """Quantization-aware training: fake-quant wrappers that learn int8 ranges under a plain `model.fit`.

    `tfopt.apply(model, tfopt.QATConfig(...))`. Fine-tune the returned model,
    then `tfopt.convert(qat_model, mode="int8", ...)`. Layers that cannot be
    quantized stay float and are listed by `tfopt.summary`.

    Returns:
        A new Keras model (the caller's is not changed) in the flavour given.

    Example:

    >>> import keras, tfopt
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(4)])
    >>> quantized = tfopt.qat(model)
    >>> quantized is model
    False
    """
    options = dict(locals())
    return apply(options.pop("model"), C.QATConfig(**options))


def prune_channels(
    model: Any,
    *,
    ratio: float = 0.5,
    importance: str = "l1",
    data: Any = None,
    include: Any = None,
    exclude: Any = None,
    round_to: int = 1,
    min_channels: int = 1,
):
    """Structured pruning: removes whole channels and returns a smaller dense model.

    `tfopt.apply(model, tfopt.ChannelPruneConfig(...), data=(data, None))`; see
    `ChannelPruneConfig` and `tfopt.compress.channels.prune_channels`.

    Returns:
        A `ChannelPruneResult`: `.model` is the smaller model; `summary()` lists
        the channels kept per layer.

    Example:

    >>> import keras, tfopt
    >>> model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(64, name="a"), keras.layers.Dense(4)])
    >>> tfopt.prune_channels(model, ratio=0.5).model.count_params() < model.count_params()
    True
    """
    options = dict(locals())
    model, data = options.pop("model"), options.pop("data")
    return apply(model, C.ChannelPruneConfig(**options), data=None if data is None else (data, None))


def decompose(
    model: Any,
    *,
    rank: int | None = None,
    energy: float | None = None,
    param_ratio: float | None = None,
    include: Any = None,
    exclude: Any = None,
):
    """Low-rank factorisation: splits Dense / Conv2D kernels into two thinner layers by truncated SVD.

    `tfopt.apply(model, tfopt.LowRankConfig(...))`; give at most one of `rank`,
    `energy` and `param_ratio` (see `LowRankConfig`).

    Returns:
        A new Keras model; fine-tune it to recover accuracy.

    Example:

    >>> import keras, tfopt
    >>> model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(64, name="a"), keras.layers.Dense(4)])
    >>> tfopt.decompose(model, rank=4, include="a").count_params() < model.count_params()
    True
    """
    options = dict(locals())
    return apply(options.pop("model"), C.LowRankConfig(**options))


def distill(
    student: Any,
    teacher: Any,
    *,
    temperature: float = 4.0,
    alpha: float = 0.1,
    feature_layers: Any = None,
    feature_weight: float = 1.0,
    teacher_outputs: str = "auto",
    student_outputs: str = "auto",
):
    """Knowledge distillation: a Keras model that trains `student` to match a frozen `teacher`.

    `tfopt.apply(student, tfopt.DistillConfig(...), teacher=teacher)`. Compile
    and fit the returned `Distiller` like any Keras model; `.student` is the
    trained student. With data, `apply` runs the training for you
    (`DistillConfig(epochs=...)`).

    Returns:
        A `Distiller` (a Keras model).

    Example:

    >>> import keras, tfopt
    >>> teacher = keras.Sequential([keras.Input((8,)), keras.layers.Dense(32), keras.layers.Dense(4)])
    >>> student = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> distiller = tfopt.distill(student, teacher, temperature=4.0)
    >>> distiller.student is not None
    True
    """
    options = dict(locals())
    student, teacher = options.pop("student"), options.pop("teacher")
    return apply(student, C.DistillConfig(**options), teacher=teacher)
