"""Configs in, new model out: one frozen dataclass of plain values per compression technique.

`tfopt.apply(model, config)` runs the technique a config names; the verbs
(`tfopt.prune`, `tfopt.cluster`, ...) are the same calls with keywords. A config
round-trips through `to_dict` / `from_dict` (JSON-ready: strings, numbers, lists),
rejects unknown keys, and checks its values when it is made, so a search over
configs fails at the config, not minutes into training.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar
from tfopt.errors import InvalidArgumentError, InvalidTypeError

def _names(value: Any, field: str) -> str | tuple[str, ...] | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise InvalidTypeError(
        f"{field} in a config must be a layer name, 're:<regex>', or a list of those (plain values, so the "
        f"config can be saved). Received: {value!r}. Use the verb (e.g. tfopt.prune) to pass a callable."
    )


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
class Config:
    """Base of the technique configs: `to_dict`, `from_dict` and the technique's name."""

    technique: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for field in ("include", "exclude"):
            if hasattr(self, field):
                object.__setattr__(self, field, _names(getattr(self, field), field))
        self.validate()

    def validate(self) -> None:
        """Checks the values; subclasses raise ValueError with what was received and what is expected."""

    def options(self) -> dict[str, Any]:
        """The keyword arguments for the technique's verb."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: `{"technique": ..., **fields}` with tuples as lists."""
        out = {"technique": self.technique}
        for key, value in self.options().items():
            out[key] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> "Config":
        """Rebuilds a config from `to_dict` output; unknown keys are an error.

        Called on `Config` itself, the `"technique"` key picks the class.
        """
        payload = dict(payload)
        technique = payload.pop("technique", cls.technique or None)
        klass = cls
        if cls is Config:
            klass = CONFIGS.get(technique)
            if klass is None:
                raise InvalidArgumentError(f"Unknown technique {technique!r}. Expected one of {sorted(CONFIGS)}.")
        elif technique not in (None, klass.technique):
            raise InvalidArgumentError(f"{klass.__name__} cannot be built from a {technique!r} config.")
        allowed = {f.name for f in dataclasses.fields(klass)}
        unknown = sorted(set(payload) - allowed)
        if unknown:
            raise InvalidArgumentError(f"Unknown {klass.__name__} key(s) {unknown}. Allowed: {sorted(allowed)}.")
        values = {k: tuple(v) if isinstance(v, list) and k == "m_by_n" else v for k, v in payload.items()}
        return klass(**values)


@dataclasses.dataclass(frozen=True)
class PruneConfig(Config):
    """Unstructured (or m:n) magnitude pruning; see `tfopt.prune`."""

    technique: ClassVar[str] = "prune"
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
    num_clusters: int = 16
    init: str = "kmeans++"
    per_channel: bool = False
    preserve_sparsity: bool = False
    include: Any = None
    exclude: Any = None

    def validate(self) -> None:
        _positive_int(self.num_clusters, "num_clusters", 2)
        _choice(self.init, "init", ("kmeans++", "linear", "density", "random"))


@dataclasses.dataclass(frozen=True)
class QATConfig(Config):
    """Quantization-aware training (8-bit); see `tfopt.quantize`."""

    technique: ClassVar[str] = "quantize"
    exclude: Any = None
    preserve: str | None = None

    def validate(self) -> None:
        _choice(self.preserve, "preserve", (None, "sparsity", "clusters"))


@dataclasses.dataclass(frozen=True)
class LowRankConfig(Config):
    """Low-rank (SVD) decomposition; see `tfopt.decompose`. Give at most one of rank / energy / param_ratio."""

    technique: ClassVar[str] = "decompose"
    rank: int | None = None
    energy: float | None = None
    param_ratio: float | None = None
    include: Any = None
    exclude: Any = None

    def validate(self) -> None:
        given = [k for k in ("rank", "energy", "param_ratio") if getattr(self, k) is not None]
        if len(given) > 1:
            raise InvalidArgumentError(f"Give at most one of rank, energy, param_ratio. Received: {given}.")
        if self.rank is not None:
            _positive_int(self.rank, "rank")
        for field in ("energy", "param_ratio"):
            value = getattr(self, field)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1):
                raise InvalidArgumentError(f"{field} must be in (0, 1). Received: {field}={value!r}.")


CONFIGS: dict[str, type[Config]] = {
    klass.technique: klass for klass in (PruneConfig, ChannelPruneConfig, ClusterConfig, QATConfig, LowRankConfig)
}


def apply(model: Any, config: Config):
    """Applies one technique, named by its config, and returns the new model.

    The same as calling the technique's verb with the config's fields as keywords
    (`tfopt.apply(model, tfopt.PruneConfig(target_sparsity=0.8))` is
    `tfopt.prune(model, target_sparsity=0.8)`); for channel pruning it returns the
    smaller model (`tfopt.prune_channels(...).model`). The caller's model is not changed.

    Args:
        model: a Keras 3 or tf_keras model.
        config: a `PruneConfig`, `ChannelPruneConfig`, `ClusterConfig`, `QATConfig`
            or `LowRankConfig`.

    Returns:
        A new Keras model.

    Raises:
        TypeError: `config` is not a tfopt config.

    Example:

    >>> import keras, tfopt
    >>> model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(64, name="a"), keras.layers.Dense(4)])
    >>> small = tfopt.apply(model, tfopt.LowRankConfig(rank=4, include="a"))
    >>> small.count_params() < model.count_params()
    True
    """
    if not isinstance(config, Config) or type(config) is Config:
        raise InvalidTypeError(
            f"apply() takes a tfopt config ({', '.join(k.__name__ for k in CONFIGS.values())}). "
            f"Received: {type(config).__name__}."
        )
    if isinstance(config, PruneConfig):
        from tfopt.compress.prune import prune

        return prune(model, **config.options())
    if isinstance(config, ChannelPruneConfig):
        from tfopt.compress.channels import prune_channels

        return prune_channels(model, **config.options()).model
    if isinstance(config, ClusterConfig):
        from tfopt.compress.cluster import cluster

        return cluster(model, **config.options())
    if isinstance(config, QATConfig):
        from tfopt.compress.qat import quantize

        return quantize(model, **config.options())
    from tfopt.compress.lowrank import decompose

    return decompose(model, **config.options())
