"""Each config class is the one registration of its technique; the verbs are `apply` with one config."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import subprocess
import sys

import pytest

import tfopt
from tfopt import config as C

# verb -> (config class, keywords a verb adds to the config's fields: the data and the models it takes)
VERBS = {
    "prune": (C.PruneConfig, set()),
    "cluster": (C.ClusterConfig, {"data", "batchnorm_data"}),  # batchnorm_data: the earlier spelling of data
    "qat": (C.QATConfig, set()),
    "prune_channels": (C.ChannelPruneConfig, {"data"}),
    "decompose": (C.LowRankConfig, set()),
    "distill": (C.DistillConfig, {"teacher", "data"}),
}


def _keywords(function) -> dict[str, inspect.Parameter]:
    parameters = list(inspect.signature(function).parameters.values())[1:]  # the model
    return {p.name: p for p in parameters}


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_registry_verb_keywords_are_the_config_fields(verb):
    klass, extra = VERBS[verb]
    keywords = _keywords(getattr(tfopt, verb))
    fields = {f.name: f for f in dataclasses.fields(klass)}
    assert set(keywords) - extra == set(fields), f"tfopt.{verb} and {klass.__name__} disagree"
    for name, field in fields.items():
        assert keywords[name].default == field.default, f"tfopt.{verb}({name}=...) default differs from the config's"


@pytest.mark.parametrize("klass", list(C.CONFIGS.values()), ids=list(C.CONFIGS))
def test_registry_each_config_names_a_handler_module_with_handle(klass):
    assert klass.handler and isinstance(klass.version, int) and klass.version >= 1
    module = importlib.import_module(klass.handler)
    assert list(inspect.signature(module.handle).parameters)[:3] in (
        ["model", "config", "context"], ["student", "config", "context"]
    )
    if klass.wrappers is not None:
        hooks = importlib.import_module(klass.wrappers.module)
        for name in ("has_wrappers", klass.wrappers.strip, klass.wrappers.summary):
            assert callable(getattr(hooks, name)), f"{klass.__name__}.wrappers: {klass.wrappers.module}.{name}"
    for name in klass.keras_layers:
        assert importlib.util.find_spec(name) is not None
    for old, new in klass.renamed.items():
        assert new in {f.name for f in dataclasses.fields(klass)} and old != new


def test_registry_keras_layer_modules_come_from_the_configs():
    from tfopt import _registration

    assert _registration.MODULES == C.keras_layer_modules()
    assert set(_registration.MODULES) == {m for k in C.CONFIGS.values() for m in k.keras_layers}
    assert "tfopt.compress.qat_layers" in _registration.MODULES


def test_registry_import_tfopt_and_its_configs_loads_no_handler():
    code = (
        "import sys, tfopt; tfopt.PruneConfig(); tfopt.Config.from_dict({'technique': 'ptq'});"
        "print(sorted(m for m in sys.modules if m.startswith(('tfopt.compress', 'tfopt.export', 'keras', 'tensorflow'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


class _Record:
    """A stand-in technique: registers itself by its config class alone."""


@dataclasses.dataclass(frozen=True)
class _ScaleConfig(C.Config):
    technique = "test_scale"
    handler = __name__
    factor: float = 2.0


def handle(model, config, context):
    """The stand-in handler: receives the config object and the context, not keywords."""
    _Record.seen = (config, context)
    return model


def test_registry_apply_runs_a_new_technique_from_its_config_alone(monkeypatch):
    import keras

    monkeypatch.setitem(C.CONFIGS, "test_scale", _ScaleConfig)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    x, y = object(), object()
    out = tfopt.apply(model, _ScaleConfig(factor=3.0), data=(x, y), teacher="t")
    config, context = _Record.seen
    assert out is model and config == _ScaleConfig(factor=3.0)
    assert context.x is x and context.y is y and context.teacher == "t" and context.last
    assert tfopt.Config.from_dict(_ScaleConfig(factor=3.0).to_dict()) == _ScaleConfig(factor=3.0)


def test_registry_qat_verb_takes_input_shape():
    assert C.QATConfig(input_shape=[28, 28, 1]).input_shape == (28, 28, 1)
    with pytest.raises(ValueError, match="input_shape must be"):
        C.QATConfig(input_shape=(0, 3))
