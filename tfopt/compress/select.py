"""Layer selection shared by every technique: `include=` / `exclude=` rules.

A rule is a layer name, `"re:<regex>"` (full match on the layer name), a
callable `layer -> bool`, or a list mixing those. Every part of a rule must match
at least one layer: a rule that matches nothing is a typo, and fails loudly.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, Union
from tfopt.errors import InvalidArgumentError, InvalidTypeError

LayerRule = Union[str, Callable[[Any], bool], Iterable[Union[str, Callable[[Any], bool]]], None]


def selected_names(rule: LayerRule, layers: Iterable[Any], label: str) -> set[str] | None:
    """Names of `layers` matched by `rule`; `None` when there is no rule.

    Args:
        rule: the include / exclude rule (see the module docstring).
        layers: the candidate layers (objects with a `.name`).
        label: `"include"` or `"exclude"`, for the error message.

    Raises:
        TypeError: an item is not a name, `"re:<regex>"` string or callable.
        ValueError: an item matches no layer, or a regex does not compile.

    Example:

    >>> class L:
    ...     def __init__(self, name): self.name = name
    >>> sorted(selected_names(["re:conv.*", "head"], [L("conv1"), L("conv2"), L("head"), L("bn")], "include"))
    ['conv1', 'conv2', 'head']
    """
    if rule is None:
        return None
    layers = list(layers)
    names = [layer.name for layer in layers]
    items = [rule] if isinstance(rule, str) or callable(rule) else list(rule)
    chosen: set[str] = set()
    for item in items:
        if callable(item):
            hits = {layer.name for layer in layers if item(layer)}
        elif isinstance(item, str) and item.startswith("re:"):
            try:
                pattern = re.compile(item[3:])
            except re.error as err:
                raise InvalidArgumentError(f"{label} rule {item!r} is not a valid regular expression: {err}.") from err
            hits = {name for name in names if pattern.fullmatch(name)}
        elif isinstance(item, str):
            hits = {item} & set(names)
        else:
            raise InvalidTypeError(
                f"{label} items must be layer names, 're:<regex>' strings or callables. "
                f"Received: {item!r} ({type(item).__name__})."
            )
        if not hits:
            shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
            raise InvalidArgumentError(
                f"{label} rule {item!r} matched no layer of the model. Layers: {shown}. Check the spelling, "
                "or use 're:<regex>' for a pattern."
            )
        chosen |= hits
    return chosen


def layer_predicate(rule: LayerRule, layers: Iterable[Any], label: str) -> Callable[[Any], bool] | None:
    """`selected_names` as a predicate on layers (by name); `None` when there is no rule."""
    names = selected_names(rule, layers, label)
    if names is None:
        return None
    return lambda layer: layer.name in names
