"""The search space of each level: what a trial may choose, the known-good seeds, and the recipe a choice means.

A trial's choices are a flat dict of plain values (Optuna parameters). Level 1
chooses only the post-training conversion; level 2 adds unstructured (with
per-layer targets from sensitivity) or 2:4 pruning, clustering and QAT
(PQAT / CQAT when it follows pruning / clustering); level 3 adds channel
pruning and low-rank factorization before them, pruning by weight share
(`share_targets`), distills from the original model after those structural
steps, and trains longer (at least 400 steps per recovery, the last one
followed by two more at a third and a tenth of the learning rate).

The latency objective (levels 2 and 3) has a space of its own, made of what
can make a model faster on a CPU: channel pruning (ratios up to 0.75) and
low-rank factorization, which shrink every matrix product; QAT or not; and
the conversion: int8 (per channel or with Dense per tensor), float16 or
float32 (a pruned model can run faster in float32 than in int8, so the
precision is chosen per candidate; dynamic range is left out, its hybrid ops
fall out of XNNPACK). Unstructured and 2:4 pruning and clustering are not in
it: they shrink the gzip file but not the time, since XNNPACK has no sparse
kernels on x86 and clustered weights run as ordinary dense ones. Its seeds
are channel pruning at several ratios with int8, and int8 alone. Level 2
recovers with fine-tunes, level 3 with distillation and longer training.
The size and arena objectives share the space above.
"""

from __future__ import annotations

from typing import Any

from tfopt.config import (
    ChannelPruneConfig, ClusterConfig, DistillConfig, FineTuneConfig, LowRankConfig, PruneConfig, PTQConfig, QATConfig,
)
from tfopt.errors import InvalidArgumentError
from tfopt.search.constraints import OBJECTIVES

# Post-training conversions by name (the `ptq` choice of every level): PTQConfig fields.
PTQ = {
    "float16": {"mode": "float16"},
    "dynamic": {"mode": "dynamic"},
    "float32": {"mode": "float32"},
    "int8": {"mode": "int8"},
    "int8_quantizer": {"mode": "int8", "engine": "litert_quantizer", "input_type": "int8", "output_type": "int8"},
    "int8_fallback": {"mode": "int8", "float_fallback": "auto"},
    "int8_per_tensor": {"mode": "int8", "per_channel_dense": False},
    "int8_io": {"mode": "int8", "input_type": "int8", "output_type": "int8"},
    "int8_io_per_tensor": {"mode": "int8", "input_type": "int8", "output_type": "int8", "per_channel_dense": False},
}

EPOCHS = {2: 2, 3: 4}
MIN_STEPS = {2: 100, 3: 400}  # optimizer steps per recovery fine-tune at least (small datasets get more epochs)
LEARNING_RATE = 3e-4
LEARNING_RATES = {2: LEARNING_RATE, 3: 1e-3}  # level 3 starts higher and decays in its last recovery
BATCH_SIZE = 64
DEFAULT_TRIALS = {2: 10, 3: 14}
LATENCY_CHANNELS = [0.0, 0.25, 0.5, 0.625, 0.75]  # channel-pruning ratios of the latency space
LATENCY_SEED_CHANNELS = (0.5, 0.75, 0.25, 0.0)  # its seeds, with int8 (0.0: int8 alone, a conversion-only trial)


def _latency_space(level: int, objective: str) -> bool:
    """True when the trial searches the latency space (levels 2 and 3 of the latency objective)."""
    if objective not in OBJECTIVES:
        raise InvalidArgumentError(f"Unknown objective {objective!r}. Expected one of {OBJECTIVES}.")
    return objective == "latency" and level >= 2


def ptq_choices(level: int, target: str, *, objective: str = "size") -> list[str]:
    """The conversions a level tries for a target (the latency space adds float16 and float32 on the cpu)."""
    latency = _latency_space(level, objective)
    if target == "micro":
        names = ["int8_io", "int8_io_per_tensor", "int8_quantizer"]
        return names if level == 1 else names[:2]
    if level == 1:
        return ["float16", "dynamic", "int8", "int8_per_tensor", "int8_quantizer", "int8_fallback"]
    if latency:
        return ["int8", "int8_per_tensor", "float16", "float32"]
    return ["int8", "int8_per_tensor"]


def suggest(trial, level: int, target: str, *, objective: str = "size") -> dict[str, Any]:
    """Asks an Optuna trial for its choices (conditional parameters only when they matter)."""
    params: dict[str, Any] = {"ptq": trial.suggest_categorical("ptq", ptq_choices(level, target, objective=objective))}
    if _latency_space(level, objective):
        params["channels"] = trial.suggest_categorical("channels", LATENCY_CHANNELS)
        params["lowrank"] = trial.suggest_categorical("lowrank", [0.0, 0.5, 0.25])
        if PTQ[params["ptq"]]["mode"] == "int8":  # QAT only matters to an int8 conversion
            params["qat"] = trial.suggest_categorical("qat", [False, True])
        return params
    if level >= 3:
        params["channels"] = trial.suggest_categorical("channels", [0.0, 0.25, 0.5])
        params["lowrank"] = trial.suggest_categorical("lowrank", [0.0, 0.5, 0.25])
    if level >= 2:
        prunes = ["none", "sparse", "2:4"] + (["share"] if level >= 3 else [])
        params["prune"] = trial.suggest_categorical("prune", prunes)
        if params["prune"] in ("sparse", "share"):
            params["sparsity"] = trial.suggest_float("sparsity", 0.5, 0.95, step=0.05)
        params["clusters"] = trial.suggest_categorical("clusters", [0, 16, 32, 8])
        params["qat"] = trial.suggest_categorical("qat", [False, True])
    return params


def seeds(level: int, target: str, *, objective: str = "size") -> list[dict[str, Any]]:
    """Known-good starting points, run first (level 1: every conversion, nothing else)."""
    ptq = ptq_choices(level, target, objective=objective)
    if level == 1:
        return [{"ptq": name} for name in ptq]
    if _latency_space(level, objective):
        return [{"ptq": ptq[0], "channels": ratio, "lowrank": 0.0, "qat": False} for ratio in LATENCY_SEED_CHANNELS]
    base = {"ptq": ptq[0], "prune": "none", "clusters": 0, "qat": False}
    if level >= 3:
        base.update(channels=0.0, lowrank=0.0)
    out = [
        {**base, "prune": "sparse", "sparsity": 0.9, "clusters": 16},
        {**base, "prune": "sparse", "sparsity": 0.8},
        {**base, "clusters": 16},
        {**base, "prune": "2:4"},
        {**base, "prune": "sparse", "sparsity": 0.8, "qat": True},
    ]
    if level >= 3:
        # Deep-Compression shape first: halve the channels, prune by weight share (the biggest layer to
        # `sparsity`, smaller ones less), cluster to 16 keeping the zeros.
        out = [
            {**base, "channels": 0.5, "prune": "share", "sparsity": 0.9, "clusters": 16},
            {**base, "channels": 0.5, "prune": "share", "sparsity": 0.95, "clusters": 16},
            {**base, "channels": 0.5, "prune": "sparse", "sparsity": 0.95, "clusters": 16},
            {**base, "channels": 0.5, "prune": "sparse", "sparsity": 0.9, "clusters": 16},
            {**base, "channels": 0.25, "prune": "sparse", "sparsity": 0.9, "clusters": 16},
            {**base, "lowrank": 0.5, "prune": "sparse", "sparsity": 0.8, "clusters": 16},
        ] + out[:3]
    return out


def default_trials(level: int, target: str) -> int:
    """Trial budget when none is given: every level-1 conversion; a fixed number for levels 2 and 3."""
    return len(ptq_choices(1, target)) if level == 1 else DEFAULT_TRIALS[level]


def ptq_step(name: str) -> dict[str, Any]:
    """The final conversion step of a recipe (a `PTQConfig` dict)."""
    return PTQConfig(**PTQ[name]).to_dict()


def epochs_for(level: int, num_train: int | None) -> int:
    """Epochs of a recovery fine-tune: the level's default, more when one epoch is only a few steps."""
    if not num_train:
        return EPOCHS[level]
    steps_per_epoch = max(1, -(-num_train // BATCH_SIZE))
    return max(EPOCHS[level], -(-MIN_STEPS[level] // steps_per_epoch))


def training_step(level: int, epochs: int | None = None, *, distill: bool = False) -> dict[str, Any]:
    """A recovery fine-tune; a distillation from the original model after structural steps at level 3.

    Wrapper steps (pruning, clustering, QAT) recover with a plain fine-tune: their masks and centroids
    train in place, which a distiller's copy of the student would not keep.
    """
    epochs = epochs or EPOCHS[level]
    rate = LEARNING_RATES[level]
    if distill:
        return DistillConfig(epochs=epochs, learning_rate=rate, batch_size=BATCH_SIZE).to_dict()
    return FineTuneConfig(epochs=epochs, learning_rate=rate, batch_size=BATCH_SIZE).to_dict()


def build_recipe(
    params: dict[str, Any], level: int, *, classification: bool, num_train: int | None = None
) -> list[dict[str, Any]]:
    """The recipe a trial's choices mean. Prune steps carry `_allocate` (global sparsity to split per
    layer by sensitivity, resolved by the runner on the model at that point) or `_robust_24`."""
    recipe: list[dict[str, Any]] = []
    if level == 1:
        return [ptq_step(params["ptq"])]
    epochs = epochs_for(level, num_train)
    ft = training_step(level, epochs)
    recover = training_step(level, epochs, distill=level >= 3)
    if params.get("channels"):
        recipe += [ChannelPruneConfig(ratio=float(params["channels"])).to_dict(), dict(recover)]
    if params.get("lowrank"):
        recipe += [LowRankConfig(param_ratio=float(params["lowrank"])).to_dict(), dict(recover)]
    prune = params.get("prune", "none")
    if prune == "sparse":
        sparsity = round(float(params["sparsity"]), 4)
        step = PruneConfig(target_sparsity=sparsity).to_dict()
        if classification:
            step["_allocate"] = sparsity
        recipe += [step, dict(ft)]
    elif prune == "share":
        sparsity = round(float(params["sparsity"]), 4)
        step = PruneConfig(target_sparsity=sparsity).to_dict()
        step["_share"] = sparsity
        recipe += [step, dict(ft)]
    elif prune == "2:4":
        step = PruneConfig(target_sparsity=0.5, m_by_n=(2, 4)).to_dict()
        if classification:
            step["_robust_24"] = True
        recipe += [step, dict(ft)]
    clusters = int(params.get("clusters", 0) or 0)
    if clusters:
        step = ClusterConfig(num_clusters=clusters, preserve_sparsity=prune != "none").to_dict()
        step["_every_layer"] = True  # cluster every Conv/Dense, the first one included (it may hold most weights)
        recipe += [step, dict(ft)]
    if params.get("qat"):
        preserve = "clusters" if clusters else ("sparsity" if prune != "none" else None)
        recipe += [QATConfig(preserve=preserve).to_dict(), training_step(level, max(1, epochs // 2))]
    if level >= 3 and len(recipe) > 1 and recipe[-1]["technique"] in ("fine_tune", "distill"):
        # Level 3 spends more time on the last recovery, with a stepwise decaying learning rate:
        # its epochs again at a third, then at a tenth of the learning rate.
        last = dict(recipe[-1])
        rate = LEARNING_RATES[level]
        recipe += [dict(last, learning_rate=rate / 3), dict(last, learning_rate=rate / 10)]
    recipe.append(ptq_step(params["ptq"]))
    return recipe


def recipe_name(params: dict[str, Any]) -> str:
    """A short readable name: `ch0.5+sp0.9+c16+int8`."""
    parts = []
    if params.get("channels"):
        parts.append(f"ch{params['channels']:g}")
    if params.get("lowrank"):
        parts.append(f"lr{params['lowrank']:g}")
    if params.get("prune") == "sparse":
        parts.append(f"sp{float(params['sparsity']):g}")
    elif params.get("prune") == "share":
        parts.append(f"sh{float(params['sparsity']):g}")
    elif params.get("prune") == "2:4":
        parts.append("2of4")
    if params.get("clusters"):
        parts.append(f"c{params['clusters']}")
    if params.get("qat"):
        parts.append("qat")
    parts.append(params["ptq"])
    return "+".join(parts)
