"""What a user allows: the accuracy (metric) drop, size, latency and arena bounds, checked before any work.

Pure functions of plain numbers: `violations` says which bounds a measured
candidate breaks and by how much, in each bound's own units.
"""

from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist
from typing import Any, Callable

import numpy as np

from tfopt.errors import InvalidArgumentError, InvalidTypeError

OBJECTIVES = ("size", "latency", "arena", "flash")
MICRO_ONLY = {"arena": "max_arena_kb", "flash": "max_flash_kb"}  # measured on TFLite Micro: target="micro"
TARGETS = ("cpu", "micro")
LEVELS = (1, 2, 3)
HIGHER_IS_BETTER = {"top1": True, "top5": True, "mae": False, "mse": False}


@dataclasses.dataclass(frozen=True)
class Constraints:
    """Bounds every candidate must meet; `None` means unbounded.

    Args:
        max_accuracy_drop: allowed top-1 (or top-5) loss in percentage points
            (`1.0` = one point). Defaults to `None`.
        max_metric_drop: allowed loss in the metric's own units; for lower-is-better
            metrics (`mae`, `mse`) the allowed increase. Defaults to `None`.
        max_size_kb: bound on the .tflite file size, KB (1024 bytes). Defaults to `None`.
        max_latency_ms: bound on the median XNNPACK latency, ms. Defaults to `None`.
        max_arena_kb: bound on the TFLite Micro arena, KB (`target="micro"` only).
            Defaults to `None`.
        max_flash_kb: bound on the flash the model takes on a device (the
            flatbuffer with its weights compressed the way TFLite Micro decodes
            them), KB (`target="micro"` only). Defaults to `None`.
        confidence: how sure the selection must be that a candidate's true drop
            is within `max_accuracy_drop` / `max_metric_drop`. A drop measured on
            n selection examples has a paired standard error (SE); a candidate
            meets the bound when `drop + z * SE <= bound`, with `z` the normal
            quantile of `confidence`. `0.5` (z = 0) judges the measured drop
            itself; `0.9` (z = 1.28) keeps only candidates that are 90% sure to
            be within the bound. Defaults to `0.5`.

    Example:

    >>> from tfopt.search.constraints import Constraints
    >>> Constraints(max_accuracy_drop=1.0).to_dict()["max_accuracy_drop"]
    1.0
    """

    max_accuracy_drop: float | None = None
    max_metric_drop: float | None = None
    max_size_kb: float | None = None
    max_latency_ms: float | None = None
    max_arena_kb: float | None = None
    max_flash_kb: float | None = None
    confidence: float = 0.5

    def __post_init__(self) -> None:
        c = self.confidence
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0.5 <= c < 1.0:
            raise InvalidArgumentError(
                f"confidence must be a probability in [0.5, 1). Received: confidence={c!r}. 0.5 judges the measured "
                "drop; 0.9 asks to be 90% sure that the true drop is within the bound."
            )
        object.__setattr__(self, "confidence", float(c))
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None or field.name == "confidence":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
                raise InvalidTypeError(f"{field.name} must be a number or None. Received: {field.name}={value!r}.")
            if value < 0 or (value == 0 and field.name not in ("max_accuracy_drop", "max_metric_drop")):
                raise InvalidArgumentError(
                    f"{field.name} must be {'>= 0' if 'drop' in field.name else '> 0'}. Received: {field.name}={value!r}. "
                    "A drop is the loss you accept (0.5 = half a point), never negative."
                )
            object.__setattr__(self, field.name, float(value))

    def to_dict(self) -> dict[str, Any]:
        """The bounds as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any] | None) -> "Constraints":
        """Builds constraints from a dict (unknown keys are an error)."""
        payload = dict(payload or {})
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(payload) - allowed)
        if unknown:
            raise InvalidArgumentError(f"Unknown constraint(s) {unknown}. Allowed: {sorted(allowed)}.")
        return cls(**payload)


def metric_name(metric: str | Callable) -> str:
    """The metric's name (a callable's `__name__`)."""
    return metric if isinstance(metric, str) else getattr(metric, "__name__", "custom")


def higher_is_better(metric: str | Callable) -> bool:
    """Whether larger values of `metric` are better (callables: unless they set `lower_is_better = True`)."""
    if isinstance(metric, str):
        return HIGHER_IS_BETTER[metric]
    return not getattr(metric, "lower_is_better", False)


def check_request(
    constraints: Any, *, objective: str, level: int, target: str, metric: str | Callable
) -> Constraints:
    """Validates an optimize request before any work; returns the constraints as a `Constraints`.

    Raises:
        tfopt.errors.InvalidArgumentError: unknown objective / level / target /
            metric, a negative drop, an accuracy bound on a regression metric, or
            an arena bound or objective with the cpu target.
    """
    if constraints is None:
        constraints = Constraints()
    elif isinstance(constraints, dict):
        constraints = Constraints.from_dict(constraints)
    elif not isinstance(constraints, Constraints):
        raise InvalidTypeError(
            f"constraints must be a tfopt Constraints or a dict of bounds. Received: {type(constraints).__name__}."
        )
    if objective not in OBJECTIVES:
        raise InvalidArgumentError(f"Unknown objective {objective!r}. Expected one of {OBJECTIVES}.")
    if isinstance(level, bool) or level not in LEVELS:
        raise InvalidArgumentError(f"level must be one of {LEVELS}. Received: level={level!r}.")
    if target not in TARGETS:
        raise InvalidArgumentError(f"Unknown target {target!r}. Expected one of {TARGETS}.")
    if isinstance(metric, str) and metric not in HIGHER_IS_BETTER:
        raise InvalidArgumentError(
            f"Unknown metric {metric!r}. Expected one of {tuple(HIGHER_IS_BETTER)} or a callable(y_true, y_pred) -> float."
        )
    if not isinstance(metric, str) and not callable(metric):
        raise InvalidTypeError(f"metric must be a name or a callable. Received: {type(metric).__name__}.")
    for name, bound in MICRO_ONLY.items():
        if target == "cpu" and (objective == name or getattr(constraints, bound) is not None):
            raise InvalidArgumentError(
                f"The TFLite Micro {name} is only measured with target='micro'. Received "
                f"objective={objective!r}, {bound}={getattr(constraints, bound)} with target='cpu'. "
                f"Pass target='micro' (--target micro) or drop the {name} bound."
            )
    if constraints.max_accuracy_drop is not None and metric not in ("top1", "top5"):
        raise InvalidArgumentError(
            f"max_accuracy_drop is in points of top-1 / top-5 accuracy; metric={metric_name(metric)!r} needs "
            "max_metric_drop in its own units."
        )
    if constraints.max_accuracy_drop is not None and constraints.max_metric_drop is not None:
        raise InvalidArgumentError("Give max_accuracy_drop (points) or max_metric_drop (metric units), not both.")
    return constraints


def allowed_drop(constraints: Constraints) -> float | None:
    """The allowed metric drop in metric units (points / 100 for accuracy), or None."""
    if constraints.max_accuracy_drop is not None:
        return constraints.max_accuracy_drop / 100.0
    return constraints.max_metric_drop


def drop(value: float, baseline: float, *, higher_better: bool) -> float:
    """How much worse `value` is than `baseline` (positive = worse), in metric units."""
    return (baseline - value) if higher_better else (value - baseline)


def paired_drop(baseline: Any, candidate: Any, *, higher_better: bool) -> tuple[float, float]:
    """The drop of `candidate` against `baseline` scored on the same examples, and its paired standard error.

    Both are per-example values whose mean is the metric (a top-1 hit 0/1, an
    absolute error). The difference is taken example by example, so only the
    examples on which the two models differ add to the error: two models that
    agree on all but 3 of 500 examples have a small SE even though each
    accuracy alone is uncertain by a point.

    >>> paired_drop([1, 1, 1, 0], [1, 1, 0, 0], higher_better=True)
    (0.25, 0.25)
    """
    a, b = np.asarray(baseline, np.float64), np.asarray(candidate, np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise InvalidArgumentError(f"paired_drop needs two equal-length 1-D arrays; received shapes {a.shape}, {b.shape}.")
    diff = (a - b) if higher_better else (b - a)
    se = float(np.std(diff, ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else math.inf
    return float(np.mean(diff)), se


def z_score(confidence: float) -> float:
    """The one-sided normal quantile of `confidence` (0.5 -> 0, 0.9 -> 1.28).

    >>> round(z_score(0.95), 3)
    1.645
    """
    return 0.0 if confidence == 0.5 else NormalDist().inv_cdf(confidence)


def chance_within(drop_value: float, se: float | None, bound: float) -> float | None:
    """The probability (normal approximation) that the true drop is at most `bound`; None without an SE.

    >>> chance_within(0.0, 0.005, 0.005) > 0.84
    True
    """
    if se is None or not math.isfinite(se):
        return None
    if se == 0:
        return 1.0 if drop_value <= bound else 0.0
    return NormalDist().cdf((bound - drop_value) / se)


def violations(candidate: dict[str, Any], constraints: Constraints) -> dict[str, float]:
    """Bounds a candidate breaks, each with the excess in the bound's units (empty: all met).

    `candidate` holds `drop` (metric units), `size_bytes`, `latency_ms_median`
    `arena_bytes` and `flash_bytes` (None when not measured: a bound on it is then broken),
    and optionally `drop_se`: the drop is then judged at the constraints'
    confidence (`drop + z * drop_se` against the bound).

    >>> violations({"drop": 0.02, "size_bytes": 2048}, Constraints(max_accuracy_drop=1.0, max_size_kb=4))
    {'max_accuracy_drop': 1.0}
    """
    out: dict[str, float] = {}
    limit = allowed_drop(constraints)
    if limit is not None:
        scale = 100.0 if constraints.max_accuracy_drop is not None else 1.0
        se = candidate.get("drop_se")
        margin = z_score(constraints.confidence) * se if se is not None and math.isfinite(se) else 0.0
        excess = candidate["drop"] + margin - limit
        if excess > 1e-12:
            out["max_accuracy_drop" if scale == 100.0 else "max_metric_drop"] = round(excess * scale, 6)
    for key, field, scale in (
        ("max_size_kb", "size_bytes", 1024.0),
        ("max_latency_ms", "latency_ms_median", 1.0),
        ("max_arena_kb", "arena_bytes", 1024.0),
        ("max_flash_kb", "flash_bytes", 1024.0),
    ):
        bound = getattr(constraints, key)
        if bound is None:
            continue
        value = candidate.get(field)
        if value is None:
            out[key] = math.inf
        elif value / scale > bound:
            out[key] = round(value / scale - bound, 6)
    return out


def relative_violation(candidate: dict[str, Any], constraints: Constraints) -> float:
    """One number for "how far from feasible": the sum of excesses relative to their bounds (0 when feasible)."""
    total = 0.0
    for key, excess in violations(candidate, constraints).items():
        if key == "max_accuracy_drop":
            bound = constraints.max_accuracy_drop
        else:
            bound = getattr(constraints, key)
        total += excess / max(bound, 1e-3) if math.isfinite(excess) else 1e6
    return total
