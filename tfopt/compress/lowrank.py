"""Low-rank decomposition: factorise Dense and Conv2D kernels by truncated SVD.

A Dense kernel `W` (in x units) becomes two Dense layers, `x @ A` (rank r, no
bias, linear) then `@ B` with the original bias and activation. A Conv2D kernel
(kh, kw, cin, cout) is read as a (kh*kw*cin) x cout matrix and becomes a kh x kw
convolution with r filters (same strides, padding, dilation) followed by a 1x1
convolution with the original bias and activation. The factors come from the SVD
(`A = U_r sqrt(S_r)`, `B = sqrt(S_r) V_r^T`), so the new model starts as the best
rank-r approximation of the old one and is fine-tuned with a plain `model.fit`.

The rank of each layer comes from one rule: a fixed `rank`, the retained
`energy` (fraction of the sum of squared singular values, per layer), or a
`param_ratio` for the whole model (ranks allocated across layers by retained
energy per weight). Layers where the chosen rank would not save
weights are left alone and listed in the plan.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, Sequence

import numpy as np

from tfopt import _keras
from tfopt.compress.select import LayerRule, selected_names
from tfopt.errors import InvalidArgumentError, UnsupportedModelError

__all__ = [
    "decompose",
    "plan_decomposition",
    "DecompositionPlan",
    "LayerDecomposition",
    "rank_for_energy",
    "allocate_ranks",
    "break_even_rank",
    "rank_for_param_ratio",
    "factorize",
]

_KINDS = ("Dense", "Conv2D")
DEFAULT_ENERGY = 0.9


# ---------------------------------------------------------------------------------------------
# Pure math: rank choice and factors.

def rank_for_energy(singular_values: Sequence[float], energy: float) -> int:
    """Smallest rank whose singular values keep `energy` of the total squared sum.

    >>> rank_for_energy([4.0, 2.0, 1.0, 0.0], 0.9)
    2
    """
    if not 0 < energy <= 1:
        raise InvalidArgumentError(f"energy must be in (0, 1]. Received: energy={energy}.")
    squares = np.square(np.asarray(singular_values, dtype=np.float64))
    total = squares.sum()
    if total == 0:
        return 1
    kept = np.cumsum(squares) / total
    return int(min(np.searchsorted(kept, energy - 1e-12) + 1, len(squares)))


def allocate_ranks(spectra: Sequence[Sequence[float]], shapes: Sequence[tuple[int, int]], budget: int) -> list[int]:
    """Ranks for several matrices whose factors share a weight budget, keeping the most energy.

    Every matrix starts at rank 1; then singular vectors are added, best first, by the
    fraction of their own matrix's energy they keep per weight they cost
    (`s_k^2 / sum(s^2) / (rows + cols)`), while they fit in `budget` (the total of
    `rank * (rows + cols)`). Small matrices therefore keep more of their rank than large ones.
    A matrix that would get more rank than `break_even_rank` is kept whole instead (its
    full rank is returned, costing `rows * cols`) and the rest of the budget is shared again.

    Args:
        spectra: singular values of each matrix, largest first.
        shapes: `(rows, cols)` of each matrix.
        budget: weights the factors may hold in total.

    Returns:
        One rank per matrix.

    Raises:
        ValueError: if `budget` cannot hold rank 1 for every matrix.

    >>> allocate_ranks([[3.0, 1.0, 0.1], [2.0, 1.0, 1.0]], [(30, 3), (40, 3)], budget=33 + 2 * 43)
    [1, 2]
    >>> allocate_ranks([[3.0, 1.0], [1.0, 1.0, 1.0]], [(4, 2), (6, 3)], budget=24)  # 6x3 kept whole
    [1, 3]
    """
    costs = [rows + cols for rows, cols in shapes]
    if budget < sum(costs):
        raise InvalidArgumentError(f"A budget of {budget} weights cannot hold rank 1 for every matrix (needs {sum(costs)}).")
    whole: set[int] = set()
    while True:
        active = [i for i in range(len(shapes)) if i not in whole]
        left = budget - sum(shapes[i][0] * shapes[i][1] for i in whole) - sum(costs[i] for i in active)
        ranks = [min(shapes[i]) if i in whole else 1 for i in range(len(shapes))]
        steps = []
        for i in active:
            energy = np.square(np.asarray(spectra[i], dtype=np.float64))
            total = energy.sum() or 1.0
            steps += [(-(energy[k] / total) / costs[i], i) for k in range(1, min(len(energy), *shapes[i]))]
        blocked: set[int] = set()
        for _, i in sorted(steps):
            if i in blocked or costs[i] > left:
                blocked.add(i)
                continue
            ranks[i] += 1
            left -= costs[i]
        # A matrix given more rank than its break-even stays whole (cheaper); share the rest again.
        grown = {i for i in active if ranks[i] > break_even_rank(*shapes[i])}
        if not grown:
            return ranks
        whole |= grown


def break_even_rank(rows: int, cols: int) -> int:
    """Largest rank whose two factors hold fewer weights than the `rows x cols` matrix (0 if none).

    >>> break_even_rank(100, 10), break_even_rank(2, 2)
    (9, 0)
    """
    return max(0, math.ceil(rows * cols / (rows + cols)) - 1)


def factorize(matrix: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Best rank-`rank` factors `A (rows x r)`, `B (r x cols)` of `matrix`, and the energy they keep.

    The singular values are split evenly (`A = U sqrt(S)`, `B = sqrt(S) V^T`) so both
    factors have a similar scale, which fine-tunes better than putting S on one side.

    >>> a, b, kept = factorize(np.outer([1.0, 2.0], [3.0, 4.0]), 1)
    >>> np.allclose(a @ b, np.outer([1.0, 2.0], [3.0, 4.0])), round(kept, 6)
    (True, 1.0)
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    if not 1 <= rank <= min(matrix.shape):
        raise InvalidArgumentError(f"rank must be in [1, {min(matrix.shape)}] for a {matrix.shape} matrix. Received: {rank}.")
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    root = np.sqrt(s[:rank])
    total = float(np.sum(s**2))
    kept = float(np.sum(s[:rank] ** 2) / total) if total else 1.0
    return u[:, :rank] * root, root[:, None] * vt[:rank], kept


# ---------------------------------------------------------------------------------------------
# Plan: what would be factorised, at which rank.

@dataclasses.dataclass(frozen=True)
class LayerDecomposition:
    """What `decompose` does to one Dense / Conv2D layer.

    Attributes:
        name: layer name (the second factor keeps it; the first is `<name>_lowrank`).
        kind: `"Dense"` or `"Conv2D"`.
        kernel_shape: the original kernel shape.
        rank: chosen rank (`None` when the layer is skipped before a rank is chosen).
        max_rank: `min(rows, cols)` of the kernel matrix.
        energy: fraction of squared singular values the rank keeps.
        params_before / params_after: weights of the layer (bias included) before and after.
        factorised: whether the layer is replaced.
        reason: why it is left alone, when it is.
    """

    name: str
    kind: str
    kernel_shape: tuple[int, ...]
    rank: int | None
    max_rank: int
    energy: float | None
    params_before: int
    params_after: int
    factorised: bool
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["kernel_shape"] = list(self.kernel_shape)
        return out


@dataclasses.dataclass(frozen=True)
class DecompositionPlan:
    """Per-layer ranks and parameter counts of a decomposition; see `plan_decomposition`.

    Attributes:
        rule: the rank rule used, e.g. `{"energy": 0.9}`.
        layers: one `LayerDecomposition` per selected Dense / Conv2D layer.
        params_before / params_after: whole-model parameter counts.
    """

    rule: dict[str, Any]
    layers: tuple[LayerDecomposition, ...]
    params_before: int
    params_after: int

    @property
    def param_ratio(self) -> float:
        """`params_after / params_before` for the whole model."""
        return self.params_after / self.params_before if self.params_before else 1.0

    @property
    def factorised(self) -> tuple[LayerDecomposition, ...]:
        return tuple(layer for layer in self.layers if layer.factorised)

    @property
    def skipped(self) -> tuple[LayerDecomposition, ...]:
        return tuple(layer for layer in self.layers if not layer.factorised)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": dict(self.rule),
            "params_before": self.params_before,
            "params_after": self.params_after,
            "param_ratio": self.param_ratio,
            "layers": [layer.to_dict() for layer in self.layers],
        }

    def summary(self) -> str:
        rule = ", ".join(f"{k}={v}" for k, v in self.rule.items())
        lines = [
            f"Low-rank decomposition ({rule}): params {self.params_before:,} -> {self.params_after:,} "
            f"({self.param_ratio:.3f}x); {len(self.factorised)} factorised, {len(self.skipped)} left alone",
            f"{'layer':<28} {'kind':<7} {'kernel':<18} {'rank':>9} {'energy':>7} {'params':>21}  note",
        ]
        for layer in self.layers:
            rank = "-" if layer.rank is None else f"{layer.rank}/{layer.max_rank}"
            energy = "-" if layer.energy is None else f"{layer.energy:.3f}"
            params = f"{layer.params_before:,} -> {layer.params_after:,}"
            lines.append(
                f"{layer.name[:28]:<28} {layer.kind:<7} {str(list(layer.kernel_shape)):<18} {rank:>9} "
                f"{energy:>7} {params:>21}  {layer.reason or ''}"
            )
        return "\n".join(lines)


def _check_value(kind: str, value: Any, where: str) -> None:
    if kind == "rank" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InvalidArgumentError(f"rank must be a positive integer. Received: {where}={value!r}.")
    if kind == "energy" and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1):
        raise InvalidArgumentError(f"energy must be in (0, 1]. Received: {where}={value!r}.")
    if kind == "param_ratio" and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1):
        raise InvalidArgumentError(f"param_ratio must be in (0, 1). Received: {where}={value!r}.")


def _rule(rank, energy, param_ratio) -> dict[str, Any]:
    given = {k: v for k, v in (("rank", rank), ("energy", energy), ("param_ratio", param_ratio)) if v is not None}
    if len(given) > 1:
        raise InvalidArgumentError(f"Pass one of rank, energy or param_ratio. Received: {given}.")
    if not given:
        return {"energy": DEFAULT_ENERGY}
    (kind, value), = given.items()
    if isinstance(value, dict):
        if not value:
            raise InvalidArgumentError(f"{kind} is an empty dict; map layer names to values, e.g. {{'dense': 0.3}}.")
        for name, item in value.items():
            if not isinstance(name, str):
                raise InvalidArgumentError(f"{kind} dict keys are layer names. Received key {name!r}.")
            _check_value(kind, item, f"{kind}[{name!r}]")
        return {kind: dict(value)}
    _check_value(kind, value, kind)
    return given


def rank_for_param_ratio(rows: int, cols: int, ratio: float) -> int:
    """Largest rank whose factors hold at most `ratio` of the `rows x cols` weights (at least 1).

    >>> rank_for_param_ratio(784, 300, 0.25)
    54
    """
    return max(1, int(math.floor(ratio * rows * cols / (rows + cols))))


def _plan(model, rank, energy, param_ratio, include, exclude):
    rule = _rule(rank, energy, param_ratio)
    layers = list(model.layers)
    included = selected_names(include, layers, "include")
    per_layer = next((v for v in rule.values() if isinstance(v, dict)), None)
    if per_layer is not None:
        known = {layer.name: type(layer).__name__ for layer in layers}
        unknown = sorted(n for n in per_layer if n not in known)
        wrong = sorted(n for n in per_layer if n in known and known[n] not in _KINDS)
        if unknown or wrong:
            raise InvalidArgumentError(
                f"per-layer {next(iter(rule))} names layers that are not top-level Dense / Conv2D layers of "
                f"{model.name!r}: {unknown + wrong}. Candidates: {[n for n, k in known.items() if k in _KINDS]}."
            )
        included = set(per_layer) if included is None else included & set(per_layer)
    excluded = selected_names(exclude, layers, "exclude") or set()
    entries: dict[str, LayerDecomposition] = {}
    candidates = []  # (layer, weights, matrix, singular values)
    for layer in layers:
        kind = type(layer).__name__
        if kind not in _KINDS or (included is not None and layer.name not in included) or layer.name in excluded:
            continue
        weights = layer.get_weights()
        shape = tuple(np.shape(weights[0]))
        rows, cols = int(np.prod(shape[:-1])), int(shape[-1])
        entries[layer.name] = LayerDecomposition(
            name=layer.name, kind=kind, kernel_shape=shape, rank=None, max_rank=min(rows, cols), energy=None,
            params_before=int(sum(np.size(w) for w in weights)), params_after=int(sum(np.size(w) for w in weights)),
            factorised=False, reason=None,
        )
        if kind == "Conv2D" and layer.get_config().get("groups", 1) != 1:
            entries[layer.name] = dataclasses.replace(entries[layer.name], reason="grouped convolution (groups > 1)")
            continue
        matrix = np.asarray(weights[0], dtype=np.float64).reshape(rows, cols)
        candidates.append((layer, weights, matrix, np.linalg.svd(matrix, compute_uv=False)))
    params_before = int(model.count_params())
    if per_layer is not None:
        kind = next(iter(rule))
        ranks = []
        for layer, _, matrix, spectrum in candidates:
            value = per_layer[layer.name]
            if kind == "rank":
                ranks.append(min(int(value), *matrix.shape))
            elif kind == "energy":
                ranks.append(rank_for_energy(spectrum, value))
            else:
                ranks.append(min(rank_for_param_ratio(*matrix.shape, value), *matrix.shape))
    elif "rank" in rule:
        ranks = [min(int(rule["rank"]), *m.shape) for _, _, m, _ in candidates]
    elif "energy" in rule:
        ranks = [rank_for_energy(s, rule["energy"]) for _, _, _, s in candidates]
    else:
        kernels = sum(m.size for _, _, m, _ in candidates)
        budget = math.floor(rule["param_ratio"] * params_before) - (params_before - kernels)
        try:
            ranks = allocate_ranks([s for *_, s in candidates], [m.shape for _, _, m, _ in candidates], budget)
        except ValueError:
            floor = params_before - kernels + sum(sum(m.shape) for _, _, m, _ in candidates)
            raise InvalidArgumentError(
                f"param_ratio={rule['param_ratio']} is out of reach: with rank 1 in every selected layer the "
                f"model keeps {floor:,} of {params_before:,} parameters ({floor / params_before:.3f}x). "
                "Raise param_ratio or include more layers."
            ) from None
    factors = {}
    for (layer, weights, matrix, _), r in zip(candidates, ranks):
        rows, cols = matrix.shape
        entry = dataclasses.replace(entries[layer.name], rank=r)
        if r > break_even_rank(rows, cols):
            reason = f"rank {r} saves nothing: {r}*({rows}+{cols}) >= {rows}*{cols}"
            entries[layer.name] = dataclasses.replace(entry, reason=reason)
            continue
        left, right, kept = factorize(matrix, r)
        factors[layer.name] = (left, right, weights[1:])
        after = entry.params_before - matrix.size + r * (rows + cols)
        entries[layer.name] = dataclasses.replace(entry, energy=kept, params_after=after, factorised=True)
    saved = sum(e.params_before - e.params_after for e in entries.values())
    plan = DecompositionPlan(rule=rule, layers=tuple(entries.values()), params_before=params_before,
                             params_after=params_before - saved)
    return plan, factors


def plan_decomposition(
    model: Any,
    *,
    rank: int | dict[str, int] | None = None,
    energy: float | dict[str, float] | None = None,
    param_ratio: float | dict[str, float] | None = None,
    include: LayerRule = None,
    exclude: LayerRule = None,
) -> DecompositionPlan:
    """Reports, without building anything, what `decompose` with the same arguments does.

    Args and raises: as `decompose`.

    Returns:
        A `DecompositionPlan`: per-layer ranks, retained energy and parameter counts,
        with `summary()` and `to_dict()`.

    Example:

    >>> import keras, tfopt
    >>> model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(300), keras.layers.Dense(10)])
    >>> plan = plan_decomposition(model, param_ratio=0.3)
    >>> plan.param_ratio <= 0.3
    True
    >>> [layer.factorised for layer in plan.layers]  # the small head keeps its full rank
    [True, False]
    """
    _keras.keras_flavor(model)
    return _plan(model, rank, energy, param_ratio, include, exclude)[0]


# ---------------------------------------------------------------------------------------------
# Rebuild: rewrite the model config, then copy weights and factors.

def _factor_configs(entry: dict, kind: str, rank: int) -> tuple[dict, dict]:
    """Serialized configs of the first (rank r, linear, no bias) and second (original output) layers."""
    first, second = copy.deepcopy(entry), copy.deepcopy(entry)
    for part in (first, second):
        part.pop("build_config", None)
    name = entry["config"]["name"]
    cfg1, cfg2 = first["config"], second["config"]
    cfg1.update(name=f"{name}_lowrank", use_bias=False, activation="linear", bias_initializer="zeros",
                bias_regularizer=None, bias_constraint=None, activity_regularizer=None)
    if "lora_rank" in cfg1:
        cfg1["lora_rank"] = None
        cfg2["lora_rank"] = None
    if "name" in first:
        first["name"] = cfg1["name"]
    if kind == "Dense":
        cfg1["units"] = rank
    else:
        cfg1["filters"] = rank
        cfg2.update(kernel_size=(1, 1), strides=(1, 1), padding="valid", dilation_rate=(1, 1))
    for cfg in (cfg1, cfg2):
        cfg.pop("batch_input_shape", None)
        cfg.pop("input_shape", None)
    return first, second


def _rewrite(config: dict, plan: DecompositionPlan) -> dict:
    config = copy.deepcopy(config)
    ranks = {layer.name: (layer.kind, layer.rank) for layer in plan.factorised}
    layers = []
    for entry in config["layers"]:
        name = entry.get("config", {}).get("name")
        if name not in ranks:
            layers.append(entry)
            continue
        kind, r = ranks[name]
        first, second = _factor_configs(entry, kind, r)
        if "inbound_nodes" in entry:  # functional: the second factor reads node j of the first
            second["inbound_nodes"] = [[[first["config"]["name"], j, 0, {}]] for j in range(len(entry["inbound_nodes"]))]
        layers += [first, second]
    config["layers"] = layers
    return config


def decompose(
    model: Any,
    *,
    rank: int | dict[str, int] | None = None,
    energy: float | dict[str, float] | None = None,
    param_ratio: float | dict[str, float] | None = None,
    include: LayerRule = None,
    exclude: LayerRule = None,
) -> Any:
    """Replaces Dense and Conv2D layers by two thinner layers from a truncated SVD.

    Use it on models whose weights sit in large Dense layers (MLP heads, classifiers)
    or wide convolutions; follow it with a short fine-tune (`model.compile(...)`,
    `model.fit(...)`), which recovers most of the accuracy lost to truncation.
    `plan_decomposition` with the same arguments reports the per-layer ranks.

    Args:
        model: a Keras 3 or tf_keras functional or Sequential model (not changed).
        rank: the same rank for every layer (capped at the kernel's). Defaults to `None`.
        energy: per layer, the smallest rank keeping this fraction of the squared
            singular values, in (0, 1]. Defaults to `None` (0.9 when no rule is given).
        param_ratio: target for the whole model, `params_after / params_before`, in (0, 1).
            The factor weights it allows are shared out across the selected layers by
            `allocate_ranks` (most retained energy per weight first), so small layers such
            as a classifier head keep their rank while big ones shrink. Defaults to `None`.

            Each rule also takes a dict of layer name -> value, to set every layer on
            its own (what a search over per-layer settings needs): `rank={"fc1": 32}`,
            `energy={"fc1": 0.8}` or `param_ratio={"fc1": 0.25, "fc2": 0.5}` (the
            factors of that layer keep at most this fraction of its kernel weights).
            Only the named layers are factorised.
        include: layers to consider: a name, `"re:<regex>"` (full match), a callable
            `layer -> bool`, or a list of those. Defaults to `None` (every top-level
            Dense and Conv2D layer).
        exclude: layers never to factorise, same forms. Defaults to `None`.

    Returns:
        A new Keras model of the same flavour. Each factorised layer `name` becomes
        `name_lowrank` (kernel A, rank r, no bias, linear) followed by `name` (kernel B,
        original bias and activation). Layers whose rank would save nothing, and grouped
        convolutions, are kept as they are (see the plan). Layers inside nested models
        are kept as they are.

    Raises:
        ValueError: for more than one rank rule, a value out of range, or an include /
            exclude rule that matches no layer.
        TypeError: if `model` is not a Keras model.
        NotImplementedError: for subclassed models (no config graph to rewrite).

    Example:

    >>> import keras, numpy as np, tfopt
    >>> model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(300, activation="relu"),
    ...                           keras.layers.Dense(10)])
    >>> small = tfopt.decompose(model, param_ratio=0.3)
    >>> small.count_params() < 0.35 * model.count_params()
    True
    >>> small.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> _ = small.fit(np.zeros((8, 784)), np.zeros((8,)), epochs=1, verbose=0)
    """
    _keras.keras_flavor(model)
    plan, factors = _plan(model, rank, energy, param_ratio, include, exclude)
    config = model.get_config()
    if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
        raise UnsupportedModelError(
            f"Cannot decompose {model.name!r} ({type(model).__name__}): subclassed models have no layer "
            "graph to rewrite. Build the model with the functional API or keras.Sequential."
        )
    try:
        new = type(model).from_config(_rewrite(config, plan))
    except (ValueError, TypeError, KeyError) as err:
        raise UnsupportedModelError(
            f"Could not rebuild {model.name!r} with factorised layers: {err}. Custom layers must be "
            "registered with keras.saving.register_keras_serializable."
        ) from err
    for layer in new.layers:
        name = layer.name
        if name.endswith("_lowrank") and name[: -len("_lowrank")] in factors:
            left = factors[name[: -len("_lowrank")]][0]
            kernel_shape = tuple(layer.get_weights()[0].shape)
            layer.set_weights([left.reshape(kernel_shape).astype(np.float32)])
        elif name in factors:
            _, right, rest = factors[name]
            kernel_shape = tuple(layer.get_weights()[0].shape)
            layer.set_weights([right.reshape(kernel_shape).astype(np.float32)] + [np.copy(w) for w in rest])
        else:
            layer.set_weights([np.copy(w) for w in model.get_layer(name).get_weights()])
    return new


def handle(model: Any, config: Any, context: Any):  # noqa: ARG001 - SVD reads no data
    """`tfopt.apply`'s handler for a `LowRankConfig`."""
    return decompose(model, rank=config.rank, energy=config.energy, param_ratio=config.param_ratio,
                     include=config.include, exclude=config.exclude)
