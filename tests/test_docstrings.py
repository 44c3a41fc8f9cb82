"""The runnable examples in public docstrings run and print what they say."""

from __future__ import annotations

import doctest
import importlib

import pytest

import tfopt

MODULES = sorted(set(tfopt._EXPORTS.values()))


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name):
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {module_name}"
