"""Configs in, new model out: one frozen dataclass per technique, and the single registration of it.

A config names a technique (pruning, clustering, QAT, channel pruning, low-rank,
distillation, fine-tuning, post-training quantization) and holds its options.
`tfopt.apply(model, *configs, data=...)` runs a recipe (a list of configs); the
verbs (`tfopt.prune`, `tfopt.cluster`, ...) are `apply` with one config. Values
are checked here, once, when the config is made, so the verbs, `apply` and a
search over configs fail at the config, not minutes into training. A config
round-trips through `to_dict` / `from_dict` (JSON-ready, with its `version`),
rejects unknown keys and reads the field names of earlier versions (`renamed`).

Each config class also says how its technique runs, as class attributes:
`handler` (the module whose `handle(model, config, context)` does the work,
imported only when a config runs), `trains` (it trains the model it gets, so
the wrappers of the step before stay on), `wrappers` (where its training
wrappers are found, stripped and described) and `keras_layers` (the modules
that register its Keras layers for loading). A new technique is a config class
here plus its handler module.

This module is plain Python: it imports no Keras, no TensorFlow and no technique.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar
from tfopt.errors import InvalidArgumentError, InvalidTypeError

def _names(value: Any, field: str) -> Any:
    if value is None or isinstance(value, str) or callable(value):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise InvalidTypeError(
        f"{field} must be a layer name, 're:<regex>', a list of those, or a callable(layer) -> bool. "
        f"Received: {value!r}."
    )


def _number(value: Any, field: str, *, low: float, high: float | None = None, low_open: bool = False) -> None:
    bad = isinstance(value, bool) or not isinstance(value, (int, float)) or value != value
    if not bad:
        bad = value <= low if low_open else value < low
        bad = bad or (high is not None and value > high)
    if bad:
        bound = f"{'>' if low_open else '>='} {low}" + (f" and <= {high}" if high is not None else "")
        raise InvalidArgumentError(f"{field} must be a number {bound}. Received: {field}={value!r}.")


def _fraction(value: Any, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise InvalidArgumentError(f"{field} must be a number in [0, 1). Received: {field}={value!r}.")


def _choice(value: Any, field: str, choices: tuple) -> None:
    if value not in choices:
        raise InvalidArgumentError(f"{field} must be one of {choices}. Received: {field}={value!r}.")


def _positive_int(value: Any, field: str, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InvalidArgumentError(f"{field} must be an integer >= {low}. Received: {field}={value!r}.")


@dataclasses.dataclass(frozen=True)
class Wrappers:
    """Where a technique's training wrappers are handled: functions of `module`.

    `module.has_wrappers(model)` finds them, `module.<strip>(model, *,
    batchnorm_data)` removes them and `module.<summary>(model)` describes them.
    `convert_wrapped` keeps them on into conversion (QAT: they carry the ranges).
    """

    module: str
    strip: str
    summary: str
    convert_wrapped: bool = False


@dataclasses.dataclass(frozen=True)
class Context:
    """What `apply` hands a handler besides the model and its config.

    Attributes:
        x: training inputs, or `None`.
        y: training labels, or `None`.
        validation: `(x_val, y_val)` held-out data (from a mapping's `x_val` /
            `y_val`), or `None`.
        teacher: the teacher for distillation: `apply`'s `teacher=`, else the
            model given to `apply`.
        calibration: calibration data for int8 conversion, or `None` (drawn from `x`).
        train_steps_after: optimizer steps of the training step that follows
            this one in the recipe (0 when none follows).
        last: this is the recipe's last step.
    """

    x: Any = None
    y: Any = None
    validation: Any = None
    teacher: Any = None
    calibration: Any = None
    train_steps_after: int = 0
    last: bool = True


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclasses.dataclass(frozen=True)
class Config:
    """Base of the technique configs: `to_dict`, `from_dict` and the technique's registration.

    Class attributes a technique sets:
        technique: its name in recipes and JSON.
        version: bumped when a field is renamed or changes meaning; stored with the config.
        renamed: `{old field name: new field name}`, read by `from_dict` (`upgrade`
            converts values whose meaning changed).
        handler: the module whose `handle(model, config, context)` runs it.
        trains: it trains the model it gets (the step before keeps its wrappers on).
        wrappers: a `Wrappers` when it leaves training wrappers on the model.
        keras_layers: modules whose import registers its Keras layers for loading.
        result_model: attribute of its result holding the model for the next step
            (`"model"` for a `ChannelPruneResult`), `None` for the result itself.
    """

    technique: ClassVar[str] = ""
    version: ClassVar[int] = 1
    renamed: ClassVar[dict[str, str]] = {}
    handler: ClassVar[str] = ""
    trains: ClassVar[bool] = False
    wrappers: ClassVar[Wrappers | None] = None
    keras_layers: ClassVar[tuple[str, ...]] = ()
    result_model: ClassVar[str | None] = None

    def __post_init__(self) -> None:
        for field in ("include", "exclude"):
            if hasattr(self, field):
                object.__setattr__(self, field, _names(getattr(self, field), field))
        self.validate()

    def validate(self) -> None:
        """Checks the values; subclasses raise ValueError with what was received and what is expected."""

    def options(self) -> dict[str, Any]:
        """The fields and their values (the keyword arguments of the technique's verb)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def needs_data(self) -> bool:
        """Whether `apply` needs labelled data to run this step (it trains)."""
        return self.trains

    @classmethod
    def upgrade(cls, payload: dict[str, Any], version: int) -> dict[str, Any]:  # noqa: ARG003 - for subclasses
        """A stored payload of `version` in today's field names (`renamed`); subclasses convert values too."""
        payload = dict(payload)
        for old, new in cls.renamed.items():
            if old in payload:
                if new in payload:
                    raise InvalidArgumentError(f"{cls.__name__} got both {old!r} and its new name {new!r}; keep {new!r}.")
                payload[new] = payload.pop(old)
        return payload

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: `{"technique": ..., "version": ..., **fields}` with tuples as lists.

        Raises:
            InvalidTypeError: a field holds a callable (an `include` / `exclude`
                rule), which cannot be saved; use names or `"re:<regex>"` instead.
        """
        out: dict[str, Any] = {"technique": self.technique, "version": self.version}
        for key, value in self.options().items():
            if callable(value):
                raise InvalidTypeError(
                    f"{type(self).__name__}.{key} is a callable, which cannot be saved. Use a layer name, "
                    "'re:<regex>' or a list of those to save or replay this config."
                )
            out[key] = _plain(value)
        return out

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> "Config":
        """Rebuilds a config from `to_dict` output; unknown keys are an error.

        Called on `Config` itself, the `"technique"` key picks the class. A
        payload of an earlier version may use field names since renamed (the
        class's `renamed` map reads them); one of a later version is refused.

        Raises:
            InvalidTypeError: `payload` is not a dict.
            InvalidArgumentError: an unknown technique or key, or a newer version.
        """
        if not isinstance(payload, dict):
            raise InvalidTypeError(f"from_dict takes a dict (from to_dict). Received: {type(payload).__name__}.")
        payload = dict(payload)
        technique = payload.pop("technique", cls.technique or None)
        technique = _RENAMED.get(technique, technique)
        klass = cls
        if cls is Config:
            klass = CONFIGS.get(technique)
            if klass is None:
                raise InvalidArgumentError(f"Unknown technique {technique!r}. Expected one of {sorted(CONFIGS)}.")
        elif technique not in (None, klass.technique):
            raise InvalidArgumentError(f"{klass.__name__} cannot be built from a {technique!r} config.")
        version = payload.pop("version", 1)
        if isinstance(version, bool) or not isinstance(version, int) or version > klass.version:
            raise InvalidArgumentError(
                f"This {klass.__name__} is version {version!r}; this tfopt reads versions up to {klass.version}. "
                "Upgrade tfopt to load it."
            )
        payload = klass.upgrade(payload, version)
        allowed = {f.name for f in dataclasses.fields(klass)}
        unknown = sorted(set(payload) - allowed)
        if unknown:
            raise InvalidArgumentError(f"Unknown {klass.__name__} key(s) {unknown}. Allowed: {sorted(allowed)}.")
        return klass(**payload)


@dataclasses.dataclass(frozen=True)
class PruneConfig(Config):
    """Unstructured (or m:n) magnitude pruning; see `tfopt.prune`."""

    technique: ClassVar[str] = "prune"
    handler: ClassVar[str] = "tfopt.compress.prune"
    wrappers: ClassVar[Wrappers] = Wrappers("tfopt.compress.prune", "strip_pruning", "pruning_summary")
    keras_layers: ClassVar[tuple[str, ...]] = ("tfopt.compress.prune_layer",)
    target_sparsity: Any = 0.8  # a fraction, or {layer name: fraction}
    schedule: str = "polynomial"
    begin_step: int = 0
    end_step: int | None = None
    frequency: int | None = None
    include: Any = None
    exclude: Any = None
    m_by_n: tuple[int, int] | None = None

    def validate(self) -> None:
        if isinstance(self.target_sparsity, dict):
            for name, value in self.target_sparsity.items():
                _fraction(value, f"target_sparsity[{name!r}]")
        else:
            _fraction(self.target_sparsity, "target_sparsity")
        _choice(self.schedule, "schedule", ("polynomial", "constant"))
        _positive_int(self.begin_step, "begin_step", 0)
        if self.m_by_n is not None:
            object.__setattr__(self, "m_by_n", tuple(self.m_by_n))


@dataclasses.dataclass(frozen=True)
class ChannelPruneConfig(Config):
    """Structured (whole-channel) pruning to a smaller dense model; see `tfopt.prune_channels`."""

    technique: ClassVar[str] = "prune_channels"
    handler: ClassVar[str] = "tfopt.compress.channels"
    result_model: ClassVar[str] = "model"
    ratio: float = 0.5
    importance: str = "l1"
    include: Any = None
    exclude: Any = None
    round_to: int = 1
    min_channels: int = 1

    def validate(self) -> None:
        _fraction(self.ratio, "ratio")
        _choice(self.importance, "importance", ("l1", "l2", "bn", "activation"))
        _positive_int(self.round_to, "round_to")
        _positive_int(self.min_channels, "min_channels")


@dataclasses.dataclass(frozen=True)
class ClusterConfig(Config):
    """Weight clustering (k-means weight sharing); see `tfopt.cluster`."""

    technique: ClassVar[str] = "cluster"
    handler: ClassVar[str] = "tfopt.compress.cluster"
    wrappers: ClassVar[Wrappers] = Wrappers("tfopt.compress.cluster", "strip_clustering", "clustering_summary")
    keras_layers: ClassVar[tuple[str, ...]] = ("tfopt.compress.cluster_layer",)
    num_clusters: int = 16
    init: str = "kmeans++"
    per_channel: bool = False
    preserve_sparsity: bool = False
    include: Any = None
    exclude: Any = None

    def validate(self) -> None:
        _positive_int(self.num_clusters, "num_clusters", 2)
        _choice(self.init, "init", ("kmeans++", "linear", "density", "random"))
        if not isinstance(self.preserve_sparsity, bool) or not isinstance(self.per_channel, bool):
            raise InvalidTypeError(
                "preserve_sparsity and per_channel must be True or False. "
                f"Received: preserve_sparsity={self.preserve_sparsity!r}, per_channel={self.per_channel!r}."
            )


@dataclasses.dataclass(frozen=True)
class QATConfig(Config):
    """Quantization-aware training for int8 (fake-quant wrappers); see `tfopt.qat`.

    `preserve` keeps what an earlier step made: `"sparsity"` (pruned zeros stay
    zero: PQAT), `"clusters"` (shared values stay shared: CQAT) or
    `"sparsity_clusters"` (both: PCQAT). `ema_decay` is the moving-average decay
    of the activation ranges.
    """

    technique: ClassVar[str] = "qat"
    handler: ClassVar[str] = "tfopt.compress.qat"
    wrappers: ClassVar[Wrappers] = Wrappers("tfopt.compress.qat", "strip_qat", "qat_summary", convert_wrapped=True)
    keras_layers: ClassVar[tuple[str, ...]] = ("tfopt.compress.qat_layers",)
    exclude: Any = None
    preserve: str | None = None
    input_shape: tuple[int | None, ...] | None = None
    ema_decay: float = 0.99

    def validate(self) -> None:
        if isinstance(self.preserve, (tuple, list)) and sorted(self.preserve) == ["clusters", "sparsity"]:
            object.__setattr__(self, "preserve", "sparsity_clusters")
        _choice(self.preserve, "preserve", QAT_PRESERVE)
        _number(self.ema_decay, "ema_decay", low=0.0, high=1.0, low_open=True)
        shape = self.input_shape
        if shape is not None:
            if not isinstance(shape, (list, tuple)) or not all(
                d is None or (isinstance(d, int) and not isinstance(d, bool) and d > 0) for d in shape
            ):
                raise InvalidArgumentError(
                    f"input_shape must be a tuple of positive ints (without the batch axis), e.g. (28, 28, 1). "
                    f"Received: input_shape={shape!r}."
                )
            object.__setattr__(self, "input_shape", tuple(shape))


@dataclasses.dataclass(frozen=True)
class LowRankConfig(Config):
    """Low-rank (SVD) decomposition; see `tfopt.decompose`. Give at most one of rank / energy / param_ratio."""

    technique: ClassVar[str] = "decompose"
    handler: ClassVar[str] = "tfopt.compress.lowrank"
    rank: Any = None  # an int, or {layer name: int}
    energy: Any = None  # a fraction, or {layer name: fraction}
    param_ratio: Any = None  # a fraction, or {layer name: fraction}
    include: Any = None
    exclude: Any = None

    def validate(self) -> None:
        given = [k for k in ("rank", "energy", "param_ratio") if getattr(self, k) is not None]
        if len(given) > 1:
            raise InvalidArgumentError(f"Give at most one of rank, energy, param_ratio. Received: {given}.")
        for field in ("rank", "energy", "param_ratio"):
            value = getattr(self, field)
            values = value.items() if isinstance(value, dict) else [(None, value)]
            for layer, v in values:
                label = field if layer is None else f"{field}[{layer!r}]"
                if v is None:
                    continue
                if field == "rank":
                    _positive_int(v, label)
                elif isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
                    raise InvalidArgumentError(f"{label} must be in (0, 1). Received: {label}={v!r}.")


QAT_PRESERVE = (None, "sparsity", "clusters", "sparsity_clusters")
PTQ_MODES = ("float32", "float16", "dynamic", "int8", "int16x8")
PTQ_ENGINES = ("converter", "litert_quantizer")
IO_TYPES = ("float32", "int8", "uint8", "int16")


@dataclasses.dataclass(frozen=True)
class PTQConfig(Config):
    """Post-training quantization to a .tflite; see `tfopt.convert`. Ends a recipe.

    `engine` is `"converter"` (the TFLite converter) or `"litert_quantizer"`
    (LiteRT Quantizer recipes). `float_fallback` keeps layers in float: a list of
    layer names, or `"auto"` for the most sensitive ones (measured, until the
    model is within `max_accuracy_drop`, in points). `per_channel_dense=False`
    quantizes Dense layers per tensor (smaller file and TFLite Micro arena).
    `input_type` / `output_type` `None` keep each engine's default.
    `layer_precision` sets each layer's precision (int4 / int8 / int16x8 /
    float16 / float32): rules as text (`"fc1=int4,re:conv.*=int8"`), a dict of
    rule -> precision, or `"auto"` (chosen from measurements on the recipe's
    validation data within `max_accuracy_drop` and `max_size_kb`); it is
    written by LiteRT Quantizer, so `engine` is then `"litert_quantizer"`.
    """

    technique: ClassVar[str] = "ptq"
    version: ClassVar[int] = 3  # 2: max_accuracy_drop in points (version 1 held a fraction); 3: layer_precision
    handler: ClassVar[str] = "tfopt.export.ptq"
    mode: str = "int8"
    engine: str = "converter"
    float_fallback: Any = None
    max_accuracy_drop: float = 0.5
    per_channel_dense: bool = True
    input_type: str | None = None
    output_type: str | None = None
    layer_precision: Any = None
    max_size_kb: float | None = None

    def validate(self) -> None:
        if self.mode == "16x8":
            object.__setattr__(self, "mode", "int16x8")
        _choice(self.mode, "mode", PTQ_MODES)
        _choice(self.engine, "engine", PTQ_ENGINES)
        _choice(self.input_type, "input_type", (None, *IO_TYPES))
        _choice(self.output_type, "output_type", (None, *IO_TYPES))
        _number(self.max_accuracy_drop, "max_accuracy_drop", low=0.0, high=100.0)
        fallback = self.float_fallback
        if isinstance(fallback, (list, tuple)) and all(isinstance(v, str) for v in fallback):
            object.__setattr__(self, "float_fallback", tuple(fallback))
        elif fallback not in (None, "auto"):
            raise InvalidArgumentError(
                f"float_fallback must be None, 'auto' or a list of layer names. Received: float_fallback={fallback!r}."
            )
        if not isinstance(self.per_channel_dense, bool):
            raise InvalidTypeError(f"per_channel_dense must be True or False. Received: {self.per_channel_dense!r}.")
        rules = self.layer_precision
        if isinstance(rules, dict):
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in rules.items()):
                raise InvalidTypeError(
                    f"layer_precision as a dict maps rules (layer names or 're:<regex>') to precision names. "
                    f"Received: {rules!r}."
                )
        elif rules is not None and not isinstance(rules, str):
            raise InvalidTypeError(
                "layer_precision must be None, rules as text ('fc1=int4,default=int8'), a dict of rule -> precision, "
                f"or 'auto'. Received: {type(rules).__name__}."
            )
        if rules is not None and self.engine != "litert_quantizer":
            object.__setattr__(self, "engine", "litert_quantizer")  # the one engine that writes per-layer precision
        if self.max_size_kb is not None:
            _number(self.max_size_kb, "max_size_kb", low=0.0, low_open=True)
        if self.max_size_kb is not None and rules != "auto":
            raise InvalidArgumentError("max_size_kb bounds layer_precision='auto'; pass layer_precision='auto' with it.")

    @classmethod
    def upgrade(cls, payload: dict[str, Any], version: int) -> dict[str, Any]:
        """Version 1 stored `max_accuracy_drop` as a fraction (0.005); version 2 in points (0.5)."""
        payload = super().upgrade(payload, version)
        if version < 2 and isinstance(payload.get("max_accuracy_drop"), (int, float)):
            payload["max_accuracy_drop"] = round(100.0 * payload["max_accuracy_drop"], 10)
        return payload


@dataclasses.dataclass(frozen=True)
class FineTuneConfig(Config):
    """Trains the model of the previous step on `apply`'s data (Adam, the loss inferred from the labels).

    Between compression steps it recovers accuracy; pruning and clustering
    wrappers train under it like any Keras model.
    """

    technique: ClassVar[str] = "fine_tune"
    handler: ClassVar[str] = "tfopt.compress.finetune"
    trains: ClassVar[bool] = True
    epochs: int = 2
    batch_size: int = 64
    learning_rate: float = 1e-3

    def validate(self) -> None:
        _positive_int(self.epochs, "epochs")
        _positive_int(self.batch_size, "batch_size")
        _number(self.learning_rate, "learning_rate", low=0.0, high=1.0, low_open=True)


@dataclasses.dataclass(frozen=True)
class DistillConfig(Config):
    """Knowledge distillation from a teacher; see `tfopt.distill`.

    In a recipe the teacher is `apply`'s `teacher=` (by default the model given
    to `apply`, before any step), and with data and `epochs` the student is
    trained and returned. Without data, `apply` returns the `Distiller` to compile and fit.
    """

    technique: ClassVar[str] = "distill"
    handler: ClassVar[str] = "tfopt.compress.distill"
    trains: ClassVar[bool] = True
    keras_layers: ClassVar[tuple[str, ...]] = ("tfopt.compress.distill",)
    temperature: float = 4.0
    alpha: float = 0.1
    feature_layers: Any = None  # [(teacher layer, student layer), ...]
    feature_weight: float = 1.0
    teacher_outputs: str = "auto"
    student_outputs: str = "auto"
    epochs: int | None = None
    batch_size: int = 64
    learning_rate: float = 1e-3

    def validate(self) -> None:
        _number(self.temperature, "temperature", low=0.0, low_open=True)
        _number(self.alpha, "alpha", low=0.0, high=1.0)
        _number(self.feature_weight, "feature_weight", low=0.0)
        for field in ("teacher_outputs", "student_outputs"):
            _choice(getattr(self, field), field, ("auto", "logits", "probabilities"))
        pairs = self.feature_layers
        if pairs is not None:
            if not all(isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(n, str) for n in p) for p in pairs):
                raise InvalidArgumentError(
                    "feature_layers must be a list of (teacher layer name, student layer name) pairs. "
                    f"Received: {pairs!r}."
                )
            object.__setattr__(self, "feature_layers", tuple(tuple(p) for p in pairs))
        if self.epochs is not None:
            _positive_int(self.epochs, "epochs")
        _positive_int(self.batch_size, "batch_size")
        _number(self.learning_rate, "learning_rate", low=0.0, high=1.0, low_open=True)

    def needs_data(self) -> bool:
        """Distillation trains (and needs data) only with `epochs`; without, `apply` returns the `Distiller`."""
        return bool(self.epochs)


CONFIGS: dict[str, type[Config]] = {
    klass.technique: klass
    for klass in (
        PruneConfig,
        ChannelPruneConfig,
        ClusterConfig,
        QATConfig,
        LowRankConfig,
        DistillConfig,
        FineTuneConfig,
        PTQConfig,
    )
}
# Technique names of earlier releases, still read by from_dict.
_RENAMED = {"quantize": "qat"}


def keras_layer_modules() -> tuple[str, ...]:
    """Every module that registers a tfopt Keras layer (for `keras.models.load_model` after `import tfopt`)."""
    return tuple(dict.fromkeys(m for klass in CONFIGS.values() for m in klass.keras_layers))
