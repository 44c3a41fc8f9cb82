"""Per-layer precision: which layer of a quantized model runs at int4, int8, int16x8, float16 or float32.

`LayerPrecisionConfig` is the config of `tfopt.convert(..., layer_precision=...)`:
either explicit rules in the include / exclude idiom (a layer name, `"re:<regex>"`
matched in full against layer names, or a list of those, each mapped to a
precision), or `auto=True` with bounds (`max_accuracy_drop` in points and / or
`max_size_kb`) that `tfopt.export.precision_handler` turns into a layer map by
measuring. The text form used by the CLI reads
`dense_1=int4,re:conv.*=int8,default=int8`.

Precisions (LiteRT, activations of every quantized layer are int8 unless said):

- `"int4"`: 4-bit weights, one scale per output channel, int8 activations.
- `"int8"`: 8-bit weights and activations (the uniform full-integer model).
- `"int16x8"`: 8-bit weights, 16-bit activations.
- `"float16"`: float16 weights dequantized to float, float compute.
- `"float32"`: the layer stays float.

Pure logic: nothing here converts or runs a model.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Iterable, Mapping

from tfopt._data import split_rules
from tfopt.errors import InvalidArgumentError, InvalidTypeError

PRECISIONS = ("int4", "int8", "int16x8", "float16", "float32")
DEFAULT_PRECISIONS = ("int8", "int16x8")  # what the layers no rule names may run at (the model's activations)
PRECISION_ALIASES = {"16x8": "int16x8", "fp16": "float16", "fp32": "float32", "float": "float32"}
# Weight bits per element of each precision, for size estimates.
WEIGHT_BITS = {"int4": 4, "int8": 8, "int16x8": 8, "float16": 16, "float32": 32}
_VERSION = 1


def canonical_precision(value: Any, where: str = "layer_precision") -> str:
    """The precision name for `value` (aliases such as `"16x8"` or `"fp16"` accepted)."""
    if not isinstance(value, str):
        raise InvalidTypeError(f"{where}: a precision is a string, one of {PRECISIONS}. Received: {value!r}.")
    name = PRECISION_ALIASES.get(value.strip().lower(), value.strip().lower())
    if name not in PRECISIONS:
        raise InvalidArgumentError(f"{where}: unknown precision {value!r}. Expected one of {PRECISIONS}.")
    return name


@dataclasses.dataclass(frozen=True)
class LayerPrecisionConfig:
    """The precision of each layer of a quantized model, by rules or chosen automatically.

    Use rules when you know which layers can take 4 bits (the big Dense layers)
    or must stay float (a fragile first or last layer); use `auto=True` to let
    `tfopt.convert` measure each layer on validation data and choose.

    Args:
        rules: `(rule, precision)` pairs in order. A rule is a Keras layer name or
            `"re:<regex>"` (full match on layer names); the first rule that
            matches a layer sets its precision; every rule must match a layer.
            Defaults to `()`.
        default: precision of the layers no rule matches: `"int8"` or
            `"int16x8"`. Defaults to `"int8"`.
        auto: choose the map by measurement (needs `max_accuracy_drop` and / or
            `max_size_kb`). Rules given with `auto=True` are fixed; the search
            chooses the other layers. Defaults to `False`.
        max_accuracy_drop: with `auto`, the allowed top-1 loss in points
            against the float .tflite. Defaults to `None`.
        max_size_kb: with `auto`, the largest flatbuffer, in KB (1024 bytes).
            Defaults to `None`.
        max_latency_ratio: with `auto`, the latency allowed against the uniform
            `default` model on LiteRT with XNNPACK (1 thread); layers whose low
            precision would cost more are left alone. `None` ignores latency.
            Defaults to `1.25`.
        candidates: with `auto`, the precisions the search may give a layer.
            Defaults to `("int4", "int8", "float16", "float32")`.
        pointwise_as_dense: write 1x1 Conv2D layers (stride 1) as Dense
            layers, which LiteRT converts to FULLY_CONNECTED: the same maths,
            and their int4 weights then run on XNNPACK instead of LiteRT's
            reference kernels. Defaults to `True`.

    Example:

    >>> cfg = LayerPrecisionConfig.parse("fc1=int4,re:conv.*=int8,default=int8")
    >>> cfg.rules
    (('fc1', 'int4'), ('re:conv.*', 'int8'))
    >>> LayerPrecisionConfig.from_dict(cfg.to_dict()) == cfg
    True
    """

    rules: tuple = ()
    default: str = "int8"
    auto: bool = False
    max_accuracy_drop: float | None = None
    max_size_kb: float | None = None
    max_latency_ratio: float | None = 1.25
    candidates: tuple = ("int4", "int8", "float16", "float32")
    pointwise_as_dense: bool = True

    def __post_init__(self):
        rules = self.rules
        if isinstance(rules, Mapping):
            rules = list(rules.items())
        if isinstance(rules, (str, bytes)) or not isinstance(rules, Iterable):
            raise InvalidTypeError(
                f"rules must be (rule, precision) pairs or a dict {{rule: precision}}. Received: rules={self.rules!r}."
            )
        checked = []
        for item in rules:
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise InvalidTypeError(f"each rule is a (rule, precision) pair. Received: {item!r}.")
            rule, precision = item
            if not isinstance(rule, str) or not rule:
                raise InvalidTypeError(
                    f"a layer rule is a layer name or 're:<regex>' string. Received: {rule!r} ({type(rule).__name__})."
                )
            if rule.startswith("re:"):
                try:
                    re.compile(rule[3:])
                except re.error as err:
                    raise InvalidArgumentError(f"layer_precision rule {rule!r} is not a valid regular expression: {err}.") from err
            checked.append((rule, canonical_precision(precision, f"layer_precision rule {rule!r}")))
        object.__setattr__(self, "rules", tuple(checked))
        default = canonical_precision(self.default, "layer_precision default")
        if default not in DEFAULT_PRECISIONS:
            raise InvalidArgumentError(
                f"layer_precision default must be one of {DEFAULT_PRECISIONS} (the activations of the model). "
                f"Received: default={self.default!r}. Name the layers that should be {default} in rules instead."
            )
        object.__setattr__(self, "default", default)
        for name in ("auto", "pointwise_as_dense"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidTypeError(f"{name} must be True or False. Received: {name}={getattr(self, name)!r}.")
        for name, low, high in (("max_accuracy_drop", 0.0, 100.0), ("max_size_kb", 0.0, math.inf),
                                ("max_latency_ratio", 1.0, math.inf)):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < high \
                    or (name == "max_size_kb" and value == 0):
                unit = {"max_accuracy_drop": "points, in [0, 100)", "max_size_kb": "KB, > 0",
                        "max_latency_ratio": "x of the uniform model, >= 1"}[name]
                raise InvalidArgumentError(f"{name} is in {unit}. Received: {name}={value!r}.")
            object.__setattr__(self, name, float(value))
        candidates = tuple(canonical_precision(c, "layer_precision candidates") for c in self.candidates)
        if not candidates:
            raise InvalidArgumentError("candidates must name at least one precision.")
        object.__setattr__(self, "candidates", candidates)
        if self.auto and self.max_accuracy_drop is None and self.max_size_kb is None:
            raise InvalidArgumentError(
                "layer_precision='auto' needs a bound: max_accuracy_drop (points) and / or max_size_kb. "
                "Example: tfopt.convert(model, layer_precision='auto', max_accuracy_drop=1.0, ...)."
            )
        if not self.auto and (self.max_accuracy_drop is not None or self.max_size_kb is not None):
            raise InvalidArgumentError(
                "max_accuracy_drop / max_size_kb bound the automatic choice; pass auto=True (layer_precision='auto')."
            )

    @classmethod
    def parse(cls, text: str, *, default: str = "int8") -> "LayerPrecisionConfig":
        """Reads the text form `rule=precision,rule=precision,...,default=int8` (the CLI's `--layer_precision`).

        `auto` alone means `auto=True` (with `max_accuracy_drop=1.0`). Rules are
        separated by commas; a comma inside (), [] or {} of a regex stays.

        >>> LayerPrecisionConfig.parse("head=float32, re:dense.*=int4").rules
        (('head', 'float32'), ('re:dense.*', 'int4'))
        """
        if not isinstance(text, str):
            raise InvalidTypeError(f"layer_precision text must be a string. Received: {text!r}.")
        if text.strip() == "auto":
            return cls(auto=True, default=default, max_accuracy_drop=1.0)
        rules = []
        for part in split_rules(text):
            rule, sep, precision = part.rpartition("=")
            if not sep or not rule.strip():
                raise InvalidArgumentError(
                    f"layer_precision: {part!r} is not RULE=PRECISION. Expected e.g. "
                    "'dense_1=int4,re:conv.*=int8,default=int8'."
                )
            if rule.strip() == "default":
                default = precision.strip()
            else:
                rules.append((rule.strip(), precision.strip()))
        if not rules and text.strip() and "default=" not in text:
            raise InvalidArgumentError(f"layer_precision {text!r} holds no RULE=PRECISION pair.")
        return cls(rules=tuple(rules), default=default)

    def to_text(self) -> str:
        """The text form (`parse` reads it back)."""
        return ",".join([f"{rule}={precision}" for rule, precision in self.rules] + [f"default={self.default}"])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; `from_dict` rebuilds the config."""
        out = dataclasses.asdict(self)
        out["rules"] = [list(pair) for pair in self.rules]
        out["candidates"] = list(self.candidates)
        out["version"] = _VERSION
        return out

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> "LayerPrecisionConfig":
        """The config from `to_dict()` output (unknown keys are rejected)."""
        if not isinstance(payload, Mapping):
            raise InvalidTypeError(f"from_dict expects a dict. Received: {type(payload).__name__}.")
        payload = dict(payload)
        version = payload.pop("version", _VERSION)
        if version != _VERSION:
            raise InvalidArgumentError(f"LayerPrecisionConfig version {version!r} is not supported (expected {_VERSION}).")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(payload) - known)
        if unknown:
            raise InvalidArgumentError(f"LayerPrecisionConfig got unknown keys {unknown}; expected some of {sorted(known)}.")
        if "rules" in payload:
            payload["rules"] = tuple(tuple(pair) for pair in payload["rules"])
        if "candidates" in payload:
            payload["candidates"] = tuple(payload["candidates"])
        return cls(**payload)

    def resolve(self, layer_names: Iterable[str]) -> dict[str, str]:
        """`{layer name: precision}` for the layers the rules name (first matching rule wins).

        Raises:
            ValueError: a rule matches no layer.

        >>> LayerPrecisionConfig(rules=(("re:d.*", "int4"), ("d2", "float32"))).resolve(["d1", "d2", "x"])
        {'d1': 'int4', 'd2': 'int4'}
        """
        names = list(layer_names)
        chosen: dict[str, str] = {}
        for rule, precision in self.rules:
            if rule.startswith("re:"):
                pattern = re.compile(rule[3:])
                hits = [n for n in names if pattern.fullmatch(n)]
            else:
                hits = [rule] if rule in names else []
            if not hits:
                shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
                raise InvalidArgumentError(
                    f"layer_precision rule {rule!r} matched no layer with weights. Layers: {shown}. Check the spelling, "
                    "or use 're:<regex>' for a pattern."
                )
            for name in hits:
                chosen.setdefault(name, precision)
        return chosen


def layer_precision_config(value: Any, *, default: str = "int8", max_accuracy_drop: float | None = None,
                           max_size_kb: float | None = None) -> LayerPrecisionConfig:
    """A `LayerPrecisionConfig` from what `convert(layer_precision=...)` accepts.

    `value` is a `LayerPrecisionConfig`, `"auto"`, the text form
    (`"fc1=int4,default=int8"`), a dict `{rule: precision}` or a list of
    `(rule, precision)` pairs. The bounds apply to `"auto"`.
    """
    bounds = max_accuracy_drop is not None or max_size_kb is not None
    if isinstance(value, LayerPrecisionConfig):
        if bounds and value.auto:
            return dataclasses.replace(value, max_accuracy_drop=max_accuracy_drop if max_accuracy_drop is not None
                                       else value.max_accuracy_drop,
                                       max_size_kb=max_size_kb if max_size_kb is not None else value.max_size_kb)
        if bounds:
            raise InvalidArgumentError("max_accuracy_drop / max_size_kb bound layer_precision='auto'; this config has auto=False.")
        return value
    if isinstance(value, str):
        if value.strip() == "auto":
            return LayerPrecisionConfig(auto=True, default=default, max_accuracy_drop=max_accuracy_drop,
                                        max_size_kb=max_size_kb)
        config = LayerPrecisionConfig.parse(value, default=default)
    elif isinstance(value, Mapping):
        config = LayerPrecisionConfig(rules=tuple(value.items()), default=default)
    elif isinstance(value, (list, tuple)):
        config = LayerPrecisionConfig(rules=tuple(tuple(v) if isinstance(v, (list, tuple)) else v for v in value),
                                      default=default)
    else:
        raise InvalidTypeError(
            "layer_precision must be 'auto', 'rule=precision,...' text, a dict {rule: precision}, a list of "
            f"(rule, precision) pairs or a LayerPrecisionConfig. Received: {type(value).__name__}."
        )
    if bounds:
        raise InvalidArgumentError(
            "max_accuracy_drop / max_size_kb bound layer_precision='auto'; with explicit rules they mean nothing. "
            "Drop them, or pass layer_precision='auto'."
        )
    return config
