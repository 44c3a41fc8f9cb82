"""Writes a Colab notebook from a list of cells: `python tools/make_notebook.py` is not needed by users.

Usage from another script: make_notebook(path, [("md", "text"), ("code", "print(1)"), ...]).
Each notebook starts with a setup cell that installs tfopt on Colab and finds the
repository checkout when run from colab/.
"""

from __future__ import annotations

import nbformat

SETUP = '''# Setup: on Colab, install tfopt; in a checkout, use the repository copy.
import os, sys
try:
    import tfopt  # noqa: F401
except ImportError:
    if os.path.exists(os.path.join("..", "tfopt", "__init__.py")):
        sys.path.insert(0, os.path.abspath(".."))
    else:
        raise ImportError(
            "tfopt is not installed. On Colab, upload or clone the tfopt repository, then run: "
            "!pip install -q -e 'tfopt[all]'  (from the folder that holds the checkout)"
        )
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tfopt
print("tfopt", tfopt.__version__)'''


def make_notebook(path: str, cells: list[tuple[str, str]]) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells.append(nbformat.v4.new_code_cell(SETUP))
    for kind, text in cells:
        cell = nbformat.v4.new_markdown_cell(text) if kind == "md" else nbformat.v4.new_code_cell(text)
        nb.cells.append(cell)
    nbformat.write(nb, path)
