"""The house looks like docs/design.md says: folders import one way, and tf_keras/tfmot live in `_legacy` only."""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "tfopt"

# Lower rank = deeper in the data path. A module may import its own group or a group of lower rank.
RANK = {
    "errors": 0,
    "_registration": 2,
    "_version": 0,
    "_extras": 0.5,  # names the pip extra in missing-dependency errors; imports errors only
    "_io": 1,
    "_data": 1,
    "_keras": 1,
    "config": 1,
    "analyze": 3,
    "measure": 4,
    "export": 5,
    "compress": 5,
    "api": 6,
    "report": 6,
    "search": 7,
    "datasets": 2,
    "demo": 8,
    "cli": 9,
}
# Two halves of one idea: the Keras seam (`_keras` for Keras 3, `_legacy` for tf_keras/tfmot), and the CLI.
SAME_GROUP = {"_legacy": "_keras", "_cli": "cli"}
LEGACY_MODULES = ("tf_keras", "tensorflow_model_optimization")


def _group(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return SAME_GROUP.get(parts[0], parts[0])


def _imports(path: pathlib.Path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("import_module", "optional_import") and node.args:
            if isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                yield node.lineno, node.args[0].value, []


def _tfopt_targets(module: str, names: list[str]) -> list[str]:
    parts = module.split(".")
    if parts[0] != "tfopt":
        return []
    if len(parts) > 1:
        return [SAME_GROUP.get(parts[1], parts[1])]
    return [SAME_GROUP.get(n, n) for n in names if SAME_GROUP.get(n, n) in RANK]  # "from tfopt import _keras"


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def test_layout_every_module_has_a_rank():
    unknown = sorted({_group(p) for p in MODULES} - set(RANK))
    assert not unknown, f"add these folders/modules to RANK and to docs/design.md: {unknown}"


def test_layout_imports_point_one_way():
    wrong = []
    for path in MODULES:
        group = _group(path)
        for line, module, names in _imports(path):
            for target in _tfopt_targets(module, names):
                if target != group and RANK.get(target, 99) >= RANK[group]:
                    wrong.append(f"{path.relative_to(PACKAGE)}:{line} ({group}) imports {module} ({target})")
    assert not wrong, "imports against the data path:\n" + "\n".join(wrong)


def test_layout_tf_keras_and_tfmot_only_in_legacy():
    found = []
    for path in MODULES:
        if path.relative_to(PACKAGE).parts[0] == "_legacy":
            continue
        for line, module, _ in _imports(path):
            if module.split(".")[0] in LEGACY_MODULES:
                found.append(f"{path.relative_to(PACKAGE)}:{line} imports {module}")
    assert not found, "tf_keras/tfmot outside tfopt/_legacy:\n" + "\n".join(found)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_layout_modules_stay_small(path):
    lines = len(path.read_text().splitlines())
    assert lines <= 600, f"{path.relative_to(PACKAGE)} has {lines} lines; split it by idea (house style: ~500)"


# Files of other helpers that still read a .tflite with LiteRT's parser directly (issue 16: to move to analyze/flatbuffer).
FLATBUFFER_READERS_TO_MOVE = {"export/_litert.py", "measure/sweep.py", "measure/_micro_runner.py"}


def test_layout_one_tflite_reader():
    """Only analyze/flatbuffer.py imports LiteRT's flatbuffer_utils or schema: one parser, one op-name table."""
    wrong = []
    for path in MODULES:
        where = str(path.relative_to(PACKAGE))
        if where == "analyze/flatbuffer.py" or where in FLATBUFFER_READERS_TO_MOVE:
            continue
        for line, module, names in _imports(path):
            touched = [module, *(f"{module}.{n}" for n in names)]
            if any(m.endswith(("flatbuffer_utils", "schema_py_generated")) for m in touched):
                wrong.append(f"{where}:{line} imports {module}")
    assert not wrong, "read .tflite files through tfopt.analyze.flatbuffer.read_model:\n" + "\n".join(wrong)
