"""Writes Colab notebooks, and gives hand-written ones the same first two cells. Not needed by users.

Every notebook in colab/ starts with:

1. a markdown cell: its title (`# ...`), an "Open in Colab" line with the notebook's path, and its introduction;
2. a setup code cell: where `import tfopt` works (a checkout, a virtual environment) it uses that tfopt;
   where it fails (Colab) it installs tfopt with `%pip` from TFOPT_SOURCE, a clone or upload of the
   repository or a built wheel, with the extras the notebook needs.

Usage:
    make_notebook(path, [("md", "# Title\\n\\nintro"), ("code", "print(1)"), ...])   # from a generator script
    python tools/make_notebook.py colab/pruning.ipynb [...]    # gives existing notebooks these two cells

Rewriting an existing notebook keeps its other cells, their ids and outputs; it is idempotent.
"""

from __future__ import annotations

import os
import re
import sys

import nbformat

SETUP_MARKER = "# Setup: uses tfopt where it is importable"
SETUP = '''# Setup: uses tfopt where it is importable (a checkout, your environment); on Colab, installs it with %pip.
TFOPT_SOURCE = "/content/tfopt"  # Colab: a clone or upload of the tfopt repository, or the path of a tfopt wheel
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
try:
    import tfopt
except ImportError:
    if os.path.isfile(os.path.join("..", "tfopt", "__init__.py")):  # run from colab/ in a checkout
        sys.path.insert(0, os.path.abspath(".."))
    elif os.path.exists(TFOPT_SOURCE):  # if pip asks for a runtime restart, restart and run this cell again
        get_ipython().run_line_magic("pip", f'install -q "{TFOPT_SOURCE}{EXTRAS}"')
    else:
        raise FileNotFoundError(
            f"tfopt is not installed and TFOPT_SOURCE={TFOPT_SOURCE!r} does not exist: upload or clone the tfopt "
            "repository to that folder (or upload a tfopt wheel and set TFOPT_SOURCE to its path), then run this cell again."
        )
    import tfopt
print("tfopt", tfopt.__version__)'''

# Extras of setup.cfg a notebook needs, from what its code uses.
_EXTRAS = [
    ("demo", re.compile(r"mlxtend|sklearn|load_dataset|tfopt\.demo")),
    ("legacy", re.compile(r"tf_keras|tensorflow_model_optimization|tfmot")),
    ("quantizer", re.compile(r"litert_quantizer")),
    ("micro", re.compile(r"tflite_micro|export_micro|target=.micro")),
    ("onnx", re.compile(r"onnx")),
    ("plot", re.compile(r"matplotlib|plot_tradeoffs|pareto\.png")),
]

# First code cells of earlier notebooks: their setup lines are replaced by SETUP, the rest of the cell is kept.
_OLD_SETUPS = [
    re.compile(r"\A# Setup: on Colab, install tfopt; in a checkout, use the repository copy\.\n.*?"
               r"import tfopt\nprint\(\"tfopt\", tfopt\.__version__\)\n?", re.S),
    re.compile(r"\Aimport os, sys\nos\.environ\.setdefault\((?P<q>['\"])TF_CPP_MIN_LOG_LEVEL(?P=q), (?P=q)2(?P=q)\)\n"
               r"try:\n    import tfopt\nexcept ImportError:[^\n]*\n    sys\.path\.insert\(0, os\.path\.abspath\("
               r"(?P=q)\.\.(?P=q)\)\)\n    import tfopt\n"),
    re.compile(r"\Aimport os, sys\nos\.environ\.setdefault\(\"TF_CPP_MIN_LOG_LEVEL\", \"2\"\)\n"
               r"if os\.path\.isdir\(os\.path\.join\(\"\.\.\", \"tfopt\"\)\)[^\n]*\n    sys\.path\.insert[^\n]*\n"
               r"(# On Colab[^\n]*\n?)*"),
]


def extras_for(sources: list[str]) -> list[str]:
    """The setup.cfg extras a notebook with these code cells needs (what `%pip install` adds)."""
    text = "\n".join(sources)
    return [name for name, pattern in _EXTRAS if pattern.search(text)]


def setup_source(extras: list[str]) -> str:
    return SETUP.replace("{EXTRAS}", f"[{','.join(extras)}]" if extras else "")


def colab_line(notebook_path: str) -> str:
    name = os.path.basename(notebook_path)
    return (f"**Open in Colab:** [colab/{name}]({name}): in [Colab](https://colab.research.google.com) choose "
            "*File > Upload notebook* (or *Open notebook > GitHub* for your copy of the repository). "
            "The first code cell installs tfopt from `TFOPT_SOURCE` (a clone or upload of the repository, "
            "or a wheel) when it is not installed.")


def _header(title_cell_source: str, notebook_path: str) -> str:
    lines = title_cell_source.strip("\n").split("\n")
    if not lines[0].startswith("# "):
        raise ValueError(f"{notebook_path}: the title cell must start with '# <title>'. Received: {lines[0]!r}.")
    rest = [line for line in lines[1:] if not line.startswith("**Open in Colab:**")]
    while rest and not rest[0].strip():
        rest.pop(0)
    return "\n\n".join(part for part in (lines[0], colab_line(notebook_path), "\n".join(rest)) if part)


def add_colab_cells(nb, path: str):
    """Puts the title + Colab cell first and the setup cell second; keeps every other cell."""
    cells = list(nb.cells)
    titles = [i for i, c in enumerate(cells) if c.cell_type == "markdown" and c.source.lstrip().startswith("# ")]
    if not titles:
        raise ValueError(f"{path}: no markdown cell starts with '# <title>'; add one.")
    title = cells.pop(titles[0])
    title.source = _header(title.source, path)
    kept, setup = [], None
    for cell in cells:
        if cell.cell_type == "code" and cell.source.startswith(SETUP_MARKER):
            setup = cell  # an earlier run of this tool: its source is rewritten below, its id kept
            continue
        if cell.cell_type == "code" and not kept_code(kept):
            for pattern in _OLD_SETUPS:
                cell.source = pattern.sub("", cell.source, count=1)
            if not cell.source.strip():
                continue
        kept.append(cell)
    extras = extras_for([c.source for c in kept if c.cell_type == "code"])
    if setup is None:
        setup = nbformat.v4.new_code_cell("")
    setup.source = setup_source(extras)
    nb.cells = [title, setup, *kept]
    return nb


def kept_code(cells) -> bool:
    return any(c.cell_type == "code" for c in cells)


def make_notebook(path: str, cells: list[tuple[str, str]]) -> None:
    """Writes a notebook from (kind, source) pairs; the first markdown cell starting with '# ' is its title."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for kind, text in cells:
        cell = nbformat.v4.new_markdown_cell(text) if kind == "md" else nbformat.v4.new_code_cell(text)
        nb.cells.append(cell)
    nbformat.write(add_colab_cells(nb, path), path)


def main(paths: list[str]) -> None:
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        nbformat.write(add_colab_cells(nb, path), path)
        print("updated", path)


if __name__ == "__main__":
    main(sys.argv[1:])
