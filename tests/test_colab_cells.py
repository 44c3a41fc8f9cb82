"""Every notebook in colab/ opens in Colab: a title cell with an "Open in Colab" line, then a setup cell that
installs tfopt with %pip only where `import tfopt` fails (tools/make_notebook.py writes both)."""

from __future__ import annotations

import ast
import builtins
import configparser
import glob
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import make_notebook  # noqa: E402

NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "colab", "*.ipynb")))


def _cells(path):
    with open(path) as handle:
        return [(c["cell_type"], "".join(c["source"])) for c in json.load(handle)["cells"]]


def _setup_extras() -> set[str]:
    parser = configparser.ConfigParser()
    parser.read(os.path.join(ROOT, "setup.cfg"))
    return set(parser["options.extras_require"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: os.path.basename(p))
def test_notebook_starts_with_title_colab_line_and_setup(path):
    cells = _cells(path)
    name = os.path.basename(path)
    kind, title = cells[0]
    assert kind == "markdown" and title.startswith("# ")
    assert "**Open in Colab:**" in title and f"[colab/{name}]({name})" in title
    kind, setup = cells[1]
    assert kind == "code" and setup.startswith(make_notebook.SETUP_MARKER)
    ast.parse(setup)
    used = make_notebook.extras_for([source for kind, source in cells[2:] if kind == "code"])
    assert setup == make_notebook.setup_source(used)
    assert set(used) <= _setup_extras()
    assert not any(kind == "code" and ("%pip" in source or "!pip" in source) for kind, source in cells[2:])


class _FakeIPython:
    def __init__(self, on_install):
        self.calls, self._on_install = [], on_install

    def run_line_magic(self, name, line):
        self.calls.append((name, line))
        self._on_install()


def _run_setup(tmp_path, monkeypatch, source_exists: bool):
    """Runs the setup cell as on Colab: no tfopt importable, no checkout around the notebook."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "tfopt", None)  # `import tfopt` raises ImportError
    source = tmp_path / "tfopt_checkout"
    if source_exists:
        source.mkdir()
    ipython = _FakeIPython(on_install=lambda: sys.modules.pop("tfopt", None))
    code = make_notebook.setup_source(["demo"]).replace('"/content/tfopt"', repr(str(source)))
    namespace = {"get_ipython": lambda: ipython, "__builtins__": builtins}
    exec(compile(code, "setup_cell", "exec"), namespace)
    return ipython, source, namespace


def test_setup_cell_installs_with_pip_only_where_tfopt_is_missing(tmp_path, monkeypatch):
    ipython, source, namespace = _run_setup(tmp_path, monkeypatch, source_exists=True)
    assert ipython.calls == [("pip", f'install -q "{source}[demo]"')]
    assert namespace["tfopt"].__name__ == "tfopt"


def test_setup_cell_names_the_missing_source(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="TFOPT_SOURCE=.*does not exist: upload or clone"):
        _run_setup(tmp_path, monkeypatch, source_exists=False)


def test_setup_cell_does_not_install_where_tfopt_imports(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ipython = _FakeIPython(on_install=lambda: None)
    namespace = {"get_ipython": lambda: ipython, "__builtins__": builtins}
    exec(compile(make_notebook.setup_source([]), "setup_cell", "exec"), namespace)
    assert ipython.calls == []


def test_rewriting_a_notebook_is_idempotent(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    path = str(tmp_path / "example.ipynb")
    make_notebook.make_notebook(path, [("md", "# Example\n\nIntro."), ("code", "import sklearn\nprint(1)")])
    first = open(path).read()
    make_notebook.main([path])
    assert open(path).read() == first
    cells = nbformat.read(path, as_version=4).cells
    assert [c.cell_type for c in cells] == ["markdown", "code", "code"]
    assert cells[0].source.startswith("# Example\n\n**Open in Colab:**") and cells[0].source.endswith("Intro.")
    assert '[demo]' in cells[1].source
