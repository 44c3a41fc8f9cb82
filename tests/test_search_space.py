"""The search space of each objective, as pure functions: what a trial may choose, its seeds, the recipes they mean.

The latency space (levels 2 and 3) holds only what can make a model faster on a CPU without sparse kernels:
channel pruning, low rank, QAT, and int8 or float conversions; never unstructured / 2:4 pruning or clustering.
The size space is a contract with existing studies (their enqueued seeds and stored distributions).
"""

from __future__ import annotations

import optuna
import pytest

from tfopt.config import Config
from tfopt.errors import InvalidArgumentError
from tfopt.search import space

LATENCY_TECHNIQUES = {"prune_channels", "decompose", "fine_tune", "distill", "qat", "ptq"}
LATENCY_PARAMS = {"ptq", "channels", "lowrank", "qat"}


def _sampled(level: int, target: str, objective: str, num_trials: int = 300):
    """`num_trials` choices from a random sampler on an in-memory study, and the distributions it saw."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    chosen, distributions = [], {}
    for _ in range(num_trials):
        trial = study.ask()
        chosen.append(space.suggest(trial, level, target, objective=objective))
        distributions.update(trial.distributions)
        study.tell(trial, 0.0)
    return chosen, distributions


def _techniques(recipe) -> list[str]:
    return [step["technique"] for step in recipe]


def _valid(recipe) -> None:
    """Every step is the dict of a real config (validated), the conversion last."""
    assert recipe[-1]["technique"] == "ptq"
    for step in recipe:
        Config.from_dict({k: v for k, v in step.items() if not k.startswith("_")})


@pytest.mark.parametrize("level", [2, 3], ids=["level2", "level3"])
@pytest.mark.parametrize("target", ["cpu", "micro"])
def test_latency_space_never_prunes_unstructured_or_clusters(level, target):
    chosen, distributions = _sampled(level, target, "latency")
    assert set(distributions) == LATENCY_PARAMS
    for params in chosen:
        assert set(params) <= LATENCY_PARAMS
        recipe = space.build_recipe(params, level, classification=True, num_train=1000)
        assert set(_techniques(recipe)) <= LATENCY_TECHNIQUES, params
        _valid(recipe)
    assert {p["channels"] for p in chosen} == set(space.LATENCY_CHANNELS)  # every ratio reachable, up to 0.75
    assert max(space.LATENCY_CHANNELS) == 0.75
    modes = {space.PTQ[p["ptq"]]["mode"] for p in chosen}
    assert modes == ({"int8", "float16", "float32"} if target == "cpu" else {"int8"})  # no dynamic range


def test_latency_space_asks_for_qat_only_with_an_int8_conversion():
    for name in space.ptq_choices(3, "cpu", objective="latency"):
        trial = optuna.trial.FixedTrial({"ptq": name, "channels": 0.5, "lowrank": 0.0, "qat": True})
        params = space.suggest(trial, 3, "cpu", objective="latency")
        assert ("qat" in params) == (space.PTQ[name]["mode"] == "int8"), name
    float32 = space.build_recipe({"ptq": "float32", "channels": 0.75, "lowrank": 0.25}, 3, classification=True)
    assert _techniques(float32)[:4] == ["prune_channels", "distill", "decompose", "distill"]
    assert float32[-1]["mode"] == "float32" and "qat" not in _techniques(float32)


@pytest.mark.parametrize("level", [2, 3], ids=["level2", "level3"])
def test_latency_seeds_are_channel_pruning_with_int8_and_valid_recipes(level):
    seeds = space.seeds(level, "cpu", objective="latency")
    ratios = [seed["channels"] for seed in seeds]
    assert len(set(ratios)) == len(ratios) >= 3 and max(ratios) == 0.75
    for seed in seeds:
        assert seed["ptq"] == "int8"
        # an enqueued seed is exactly a point of the space: the trial asks for every key it holds, and only those
        assert space.suggest(optuna.trial.FixedTrial(seed), level, "cpu", objective="latency") == seed
        recipe = space.build_recipe(seed, level, classification=True, num_train=1000)
        _valid(recipe)
        assert set(_techniques(recipe)) <= LATENCY_TECHNIQUES
        steps = [s for s in recipe if s["technique"] == "prune_channels"]
        assert [s["ratio"] for s in steps] == ([seed["channels"]] if seed["channels"] else [])
        recovery = "distill" if level == 3 else "fine_tune"
        assert not steps or _techniques(recipe)[1] == recovery
        assert space.recipe_name(seed).endswith("int8")


# ---------------------------------------------------------------------- the size space is what studies hold


SIZE_SEEDS = {
    2: [
        {"ptq": "int8", "prune": "sparse", "clusters": 16, "qat": False, "sparsity": 0.9},
        {"ptq": "int8", "prune": "sparse", "clusters": 0, "qat": False, "sparsity": 0.8},
        {"ptq": "int8", "prune": "none", "clusters": 16, "qat": False},
        {"ptq": "int8", "prune": "2:4", "clusters": 0, "qat": False},
        {"ptq": "int8", "prune": "sparse", "clusters": 0, "qat": True, "sparsity": 0.8},
    ],
    3: [
        {"channels": 0.5, "prune": "share", "sparsity": 0.9, "clusters": 16},
        {"channels": 0.5, "prune": "share", "sparsity": 0.95, "clusters": 16},
        {"channels": 0.5, "prune": "sparse", "sparsity": 0.95, "clusters": 16},
        {"channels": 0.5, "prune": "sparse", "sparsity": 0.9, "clusters": 16},
        {"channels": 0.25, "prune": "sparse", "sparsity": 0.9, "clusters": 16},
        {"lowrank": 0.5, "prune": "sparse", "sparsity": 0.8, "clusters": 16},
        {"prune": "sparse", "sparsity": 0.9, "clusters": 16},
        {"prune": "sparse", "sparsity": 0.8},
        {"clusters": 16},
    ],
}


def _size_seed(level: int, changes: dict) -> dict:
    base = {"ptq": "int8", "prune": "none", "clusters": 0, "qat": False}
    if level >= 3:
        base.update(channels=0.0, lowrank=0.0)
    return {**base, **changes}


@pytest.mark.parametrize("objective", ["size", "arena", None], ids=["size", "arena", "default"])
@pytest.mark.parametrize("level", [1, 2, 3], ids=["level1", "level2", "level3"])
def test_size_and_arena_seeds_are_unchanged(level, objective):
    kwargs = {} if objective is None else {"objective": objective}
    expected = (
        [{"ptq": n} for n in ("float16", "dynamic", "int8", "int8_per_tensor", "int8_quantizer", "int8_fallback")]
        if level == 1 else [_size_seed(level, s) for s in SIZE_SEEDS[level]]
    )
    assert space.seeds(level, "cpu", **kwargs) == expected
    assert space.seeds(1, "cpu", objective="latency") == space.seeds(1, "cpu")  # level 1 is conversions for all


def test_size_space_distributions_are_unchanged():
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    _, level3 = _sampled(3, "cpu", "size", num_trials=200)
    assert level3 == {
        "ptq": CategoricalDistribution(["int8", "int8_per_tensor"]),
        "channels": CategoricalDistribution([0.0, 0.25, 0.5]),
        "lowrank": CategoricalDistribution([0.0, 0.5, 0.25]),
        "prune": CategoricalDistribution(["none", "sparse", "2:4", "share"]),
        "sparsity": FloatDistribution(0.5, 0.95, step=0.05),
        "clusters": CategoricalDistribution([0, 16, 32, 8]),
        "qat": CategoricalDistribution([False, True]),
    }
    _, level2 = _sampled(2, "cpu", "size", num_trials=200)
    assert set(level2) == set(level3) - {"channels", "lowrank"} and level2["prune"].choices == ("none", "sparse", "2:4")
    assert space.default_trials(2, "cpu") == 10 and space.default_trials(3, "cpu") == 14


def test_unknown_objective_names_the_ones_expected():
    with pytest.raises(InvalidArgumentError, match=r"Unknown objective 'speed'. Expected one of \('size', 'latency', 'arena', 'flash'\)"):
        space.seeds(2, "cpu", objective="speed")
