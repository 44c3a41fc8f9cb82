"""Every Colab notebook in colab/ runs top to bottom offline (at its small size), on the project's own kernel.

scripts/venv.sh registers that kernel inside .venv (`tfopt-venv`); the user's own Jupyter kernels
are never touched, which `test_venv_script_leaves_home_kernels_alone` checks with a fake HOME.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "colab", "*.ipynb")))
VENV = os.path.join(ROOT, ".venv")
KERNEL_NAME = "tfopt-venv"
KERNELS_PATH = os.path.join(VENV, "share", "jupyter")


def _kernel_spec_dir() -> str:
    return os.path.join(KERNELS_PATH, "kernels", KERNEL_NAME)


@pytest.mark.xdist_group("jupyter_kernel")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[os.path.basename(p) for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    if not os.path.isfile(os.path.join(_kernel_spec_dir(), "kernel.json")):
        pytest.fail(f"Kernel {KERNEL_NAME!r} is not installed in {KERNELS_PATH}: run scripts/venv.sh first.")
    monkeypatch.setenv("JUPYTER_PATH", KERNELS_PATH)
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name=KERNEL_NAME, resources={"metadata": {"path": os.path.dirname(path)}}
    )
    client.execute()
    errors = [o for cell in notebook.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[os.path.basename(p) for p in NOTEBOOKS])
def test_notebook_is_valid_without_repair(path):
    """nbformat validates the file as written: every cell has its id (nbformat will refuse files without them)."""
    nbformat = pytest.importorskip("nbformat")
    with open(path) as handle:
        notebook = json.load(handle)
    assert [i for i, cell in enumerate(notebook["cells"]) if "id" not in cell] == []
    nbformat.validate(nbformat.from_dict(notebook))


def _tree_digest(folder: str) -> dict[str, str]:
    """Relative path -> sha256 of every file (and '<dir>' for every folder) under `folder`."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames:
            found[os.path.relpath(os.path.join(dirpath, name), folder)] = "<dir>"
        for name in filenames:
            full = os.path.join(dirpath, name)
            with open(full, "rb") as handle:
                found[os.path.relpath(full, folder)] = hashlib.sha256(handle.read()).hexdigest()
    return found


def _stamp_is_current() -> bool:
    stamp = os.path.join(VENV, ".tfopt-installed")
    if not os.path.isfile(stamp):
        return False
    digest = hashlib.sha256()
    for name in ("setup.cfg", os.path.join("constraints", "ci.txt")):
        with open(os.path.join(ROOT, name), "rb") as handle:
            digest.update(handle.read())
    with open(stamp) as handle:
        return handle.read().strip() == digest.hexdigest()


@pytest.mark.xdist_group("jupyter_kernel")  # reinstalls the kernel: never while a notebook starts it
def test_venv_script_leaves_home_kernels_alone(tmp_path):
    if not _stamp_is_current():
        pytest.skip(".venv is not installed or out of date: this test never runs pip; run scripts/venv.sh first.")
    home = tmp_path / "home"
    user_kernel = home / ".local" / "share" / "jupyter" / "kernels" / "python3"
    user_kernel.mkdir(parents=True)
    (user_kernel / "kernel.json").write_text('{"argv": ["/usr/bin/python3", "-m", "ipykernel_launcher", "-f", '
                                             '"{connection_file}"], "display_name": "My own Python 3", '
                                             '"language": "python"}')
    (user_kernel / "logo-64x64.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a logo")
    before = _tree_digest(str(home))
    env = {key: value for key, value in os.environ.items() if not key.startswith(("JUPYTER", "IPYTHON"))}
    env.update(HOME=str(home), XDG_DATA_HOME=str(home / ".local" / "share"), XDG_CONFIG_HOME=str(home / ".config"),
               XDG_CACHE_HOME=str(home / ".cache"), PYTHON=sys.executable)
    done = subprocess.run(["bash", os.path.join(ROOT, "scripts", "venv.sh")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "installing" not in done.stdout  # the stamp matched: no pip run
    assert _tree_digest(str(home)) == before
    with open(os.path.join(_kernel_spec_dir(), "kernel.json")) as handle:
        spec = handle.read()
    assert os.path.join(".venv", "bin", "python") in spec
