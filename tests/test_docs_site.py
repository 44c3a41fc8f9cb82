"""The docs site (mkdocs.yml, tools/docs_hooks.py, scripts/docs.sh): it builds with warnings as errors and its
API reference documents every name in `tfopt.__all__`.

The build needs the docs tools, which scripts/docs.sh installs into .venv (CI runs it before the tests).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

import tfopt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import docs_hooks  # noqa: E402


def _needs_mkdocs():
    try:
        import mkdocs  # noqa: F401
        import mkdocstrings_handlers.python  # noqa: F401
    except ImportError:
        message = "the docs tools are not installed: run scripts/docs.sh once"
        if os.environ.get("TFOPT_CI") == "1":  # .ci/run runs scripts/docs.sh first: missing there is a failure
            pytest.fail(message)
        pytest.skip(message)


def test_api_pages_document_every_public_name():
    pages = docs_hooks.api_pages()
    rendered = set()
    for source in pages.values():
        for path, heading in re.findall(r"^::: (\S+)\n    options:\n      heading: \"tfopt\.(\w+)\"", source, re.M):
            obj = getattr(tfopt, heading)
            assert path == f"{obj.__module__}.{obj.__qualname__}"
            rendered.add(heading)
    assert sorted(rendered) == sorted(tfopt.__all__)
    listed = re.findall(r"^\| \[`tfopt\.(\w+)`\]\((\w+)\.md#tfopt\.\1\)", pages["api/index.md"], re.M)
    assert sorted(name for name, _ in listed) == sorted(tfopt.__all__)
    assert all(f"api/{page}.md" in pages for _, page in listed)


def test_api_groups_follow_the_defining_module():
    assert docs_hooks.group_of("prune")[0] == "transform"
    assert docs_hooks.group_of("convert")[0] == "export"
    assert docs_hooks.group_of("optimize")[0] == "search"
    assert docs_hooks.group_of("TfoptError")[0] == "errors"


@pytest.mark.parametrize(
    "markdown, repo_uri, page_uri, expected",
    [
        ("[nb](../colab/pruning.ipynb)", "docs/index.md", "index.md", "[nb](colab/pruning.ipynb)"),
        ("[g](docs/design.md#errors)", "README.md", "start.md", "[g](design.md#errors)"),
        ("[i](index.md)", "docs/api/index.md", "api/index.md", "[i](index.md)"),
        ("[w](https://keras.io/a.md)", "docs/index.md", "index.md", "[w](https://keras.io/a.md)"),
        ("[gone](../nowhere.md)", "docs/index.md", "index.md", "[gone](../nowhere.md)"),
        ("```\n[nb](../colab/pruning.ipynb)\n```", "docs/index.md", "index.md",
         "```\n[nb](../colab/pruning.ipynb)\n```"),
    ],
    ids=["notebook", "readme_to_guide", "in_docs", "web", "missing_kept_for_mkdocs_to_report", "code_block"],
)
def test_links_leaving_docs_are_mapped_into_the_site(markdown, repo_uri, page_uri, expected):
    copied = {"colab/pruning.ipynb": "colab/pruning.ipynb", "README.md": docs_hooks.README_PAGE}
    assert docs_hooks.rewrite_links(markdown, repo_uri, page_uri, copied) == expected


def test_doctests_are_fenced_outside_existing_code_blocks():
    text = "Example:\n\n>>> x = 1\n>>> x\n1\n\nAfter.\n\n```python\n>>> kept\n```"
    assert docs_hooks.fence_doctests(text) == (
        "Example:\n\n```pycon\n>>> x = 1\n>>> x\n1\n```\n\nAfter.\n\n```python\n>>> kept\n```")


def test_site_builds_strict_and_renders_every_public_name(tmp_path):
    _needs_mkdocs()
    site = tmp_path / "site"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert "WARNING" not in log
    html = "".join((site / "api" / page / "index.html").read_text() for page in os.listdir(site / "api")
                   if (site / "api" / page / "index.html").is_file())
    documented = set(re.findall(r'id="tfopt\.(\w+)"', html))
    assert sorted(n for n in tfopt.__all__ if n not in documented) == []
    assert (site / "troubleshooting" / "index.html").is_file() and (site / "byo_model" / "index.html").is_file()


def test_a_broken_link_fails_the_build(tmp_path, monkeypatch):
    _needs_mkdocs()
    from mkdocs import exceptions
    from mkdocs.commands.build import build
    from mkdocs.config import load_config

    docs = tmp_path / "docs"
    shutil.copytree(os.path.join(ROOT, "docs"), docs)
    (docs / "index.md").write_text((docs / "index.md").read_text() + "\nSee [the page](no_such_page.md).\n")
    monkeypatch.chdir(ROOT)
    config = load_config(os.path.join(ROOT, "mkdocs.yml"), docs_dir=str(docs), site_dir=str(tmp_path / "site"))
    with pytest.raises(exceptions.Abort, match="warning"):
        build(config)
