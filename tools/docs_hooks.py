"""MkDocs hooks for the docs site (mkdocs.yml `hooks:`); scripts/docs.sh runs the build.

Two jobs, both done at build time so nothing generated is committed:

1. The API reference. `api/index.md` lists every name in `tfopt.__all__` and one page per group
   (`api/<group>.md`) renders each name's docstring with mkdocstrings. The names come from the
   imported package, so a name added to or removed from `__all__` shows up in the next build.
2. Links that leave docs/. The guides link to the README and to colab/*.ipynb with repository-relative
   paths (`../colab/pruning.ipynb`), which work on GitHub. In the site those files are copied next to
   the pages (the README becomes the page `start.md`, notebooks are served as downloads) and the links
   are rewritten to them. A link to a file that does not exist is left as written, so MkDocs reports it.
"""

from __future__ import annotations

import inspect
import os
import posixpath
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The group of a public name is the tfopt module that defines it; the order here is the order of the pages.
GROUPS = [
    ("transform", "Models: transform, strip, load", ("tfopt.api", "tfopt.compress")),
    ("configs", "Configs", ("tfopt.config",)),
    ("export", "Export", ("tfopt.export",)),
    ("analyze", "Analyze", ("tfopt.analyze",)),
    ("measure", "Measure", ("tfopt.measure",)),
    ("search", "Search", ("tfopt.search",)),
    ("report", "Reports", ("tfopt.report",)),
    ("errors", "Errors", ("tfopt.errors",)),
]
OTHER = ("other", "Other", ())
README_PAGE = "start.md"  # "README.md" / "readme.md" would be taken as the folder's index page
_LINK = re.compile(r"(\]\()([^)\s]+)(\))")
_FENCE = re.compile(r"^(```|~~~)", re.MULTILINE)


def public_names() -> list[str]:
    import tfopt

    return list(tfopt.__all__)


def group_of(name: str) -> tuple[str, str, tuple[str, ...]]:
    import tfopt

    module = getattr(getattr(tfopt, name), "__module__", "") or ""
    for group in GROUPS:
        if any(module == prefix or module.startswith(prefix + ".") for prefix in group[2]):
            return group
    return OTHER


def _defined_at(name: str) -> str:
    """The dotted path of the object behind `tfopt.<name>` in the module that defines it."""
    import tfopt

    obj = getattr(tfopt, name)
    return f"{obj.__module__}.{obj.__qualname__}"


def _summary(name: str) -> str:
    import tfopt

    doc = inspect.getdoc(getattr(tfopt, name)) or ""
    first = doc.strip().split("\n\n")[0].replace("\n", " ").replace("|", "\\|")
    return first


def api_pages() -> dict[str, str]:
    """{src_uri: markdown} for the API reference: an index and one page per group."""
    grouped: dict[tuple, list[str]] = {}
    for name in public_names():
        grouped.setdefault(group_of(name), []).append(name)
    order = GROUPS + [OTHER]
    index = [
        "# API reference",
        "",
        "Every public name of `tfopt` (its `__all__`), generated from the docstrings at build time. "
        "Users import `tfopt` only; the module each name lives in is an implementation detail.",
        "",
    ]
    pages = {}
    for group in order:
        names = grouped.get(group)
        if not names:
            continue
        slug, title, _ = group
        index += [f"## [{title}]({slug}.md)", "", "| name | summary |", "|---|---|"]
        index += [f"| [`tfopt.{n}`]({slug}.md#tfopt.{n}) | {_summary(n)} |" for n in names]
        index.append("")
        body = [f"# {title}", ""]
        for n in names:  # tfopt loads its names lazily, so mkdocstrings reads each where it is defined
            body += [
                f"[](){{#tfopt.{n}}}",  # an autorefs anchor: `#tfopt.<name>` and `[tfopt.<name>][]` both resolve
                f"::: {_defined_at(n)}",
                "    options:",
                f'      heading: "tfopt.{n}"',
                f'      toc_label: "tfopt.{n}"',
                "",
            ]
        pages[f"api/{slug}.md"] = "\n".join(body)
    pages["api/index.md"] = "\n".join(index)
    return pages


def _split_code(markdown: str) -> list[tuple[bool, str]]:
    """[(is_code, text)] so links are rewritten outside fenced code blocks only."""
    parts, inside, start = [], False, 0
    for match in _FENCE.finditer(markdown):
        parts.append((inside, markdown[start:match.start()]))
        start, inside = match.start(), not inside
    parts.append((inside, markdown[start:]))
    return parts


def _repo_target(src_uri: str, target: str) -> str | None:
    """The repository path a relative link points to, or None if it is not a relative file link."""
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith(("#", "/")):
        return None
    path = target.split("#", 1)[0]
    if not path:
        return None
    return posixpath.normpath(posixpath.join(posixpath.dirname(src_uri), path))


def rewrite_links(markdown: str, repo_uri: str, page_uri: str, copied: dict[str, str]) -> str:
    """Rewrites links of a page whose repository path is `repo_uri` and whose site path is `page_uri`.

    `copied` maps repository paths (outside docs/) to the site path they are served at; a link to
    docs/... becomes a link to the page itself; other links are kept.
    """

    def replace(match: re.Match) -> str:
        target = match.group(2)
        repo_path = _repo_target(repo_uri, target)
        if repo_path is None:
            return match.group(0)
        if repo_path.startswith("docs/"):
            site_path = repo_path[len("docs/"):]
        elif repo_path in copied:
            site_path = copied[repo_path]
        else:
            return match.group(0)
        anchor = "#" + target.split("#", 1)[1] if "#" in target else ""
        new = posixpath.relpath(site_path, posixpath.dirname(page_uri) or ".") + anchor
        return match.group(1) + new + match.group(3)

    return "".join(text if code else _LINK.sub(replace, text) for code, text in _split_code(markdown))


def _outside_links(markdown: str, repo_uri: str) -> set[str]:
    found = set()
    for code, text in _split_code(markdown):
        if code:
            continue
        for match in _LINK.finditer(text):
            repo_path = _repo_target(repo_uri, match.group(2))
            if repo_path and not repo_path.startswith(("docs/", "../")) and \
                    os.path.isfile(os.path.join(ROOT, repo_path)):
                found.add(repo_path)
    return found


# Site path -> repository path of the pages that come from outside docs/ (filled by on_files).
_FROM_REPO: dict[str, str] = {}
_COPIED: dict[str, str] = {}


def on_files(files, config):
    from mkdocs.structure.files import File

    for src_uri, content in api_pages().items():
        files.append(File.generated(config, src_uri, content=content))
    wanted = set()
    for file in files.documentation_pages():
        if file.abs_src_path and os.path.isfile(file.abs_src_path):
            with open(file.abs_src_path, encoding="utf-8") as handle:
                wanted |= _outside_links(handle.read(), "docs/" + file.src_uri)
    queue = [path for path in wanted if path.endswith(".md")]
    while queue:  # the README's own links to files outside docs/ (a copied page links on)
        path = queue.pop()
        with open(os.path.join(ROOT, path), encoding="utf-8") as handle:
            more = _outside_links(handle.read(), path) - wanted
        wanted |= more
        queue += [p for p in more if p.endswith(".md")]
    _COPIED.clear()
    _FROM_REPO.clear()
    for repo_path in sorted(wanted):
        site_path = README_PAGE if repo_path == "README.md" else repo_path
        _COPIED[repo_path] = site_path
        _FROM_REPO[site_path] = repo_path
        files.append(File.generated(config, site_path, abs_src_path=os.path.join(ROOT, repo_path)))
    return files


def on_page_markdown(markdown, page, config, files):
    src_uri = page.file.src_uri
    repo_uri = _FROM_REPO.get(src_uri, "docs/" + src_uri)
    return rewrite_links(markdown, repo_uri, src_uri, _COPIED)


# --- griffe extension (mkdocs.yml: mkdocstrings options `extensions`) -------------------------------------

try:
    import griffe
except ImportError:  # the hooks module is also imported without the docs tools (tests of the link rewriting)
    griffe = None


def fence_doctests(text: str) -> str:
    """Wraps the `>>>` examples of a Keras-style docstring in ```pycon fences.

    Keras puts its doctests under a plain `Example:` line, which Markdown would render as nested
    block quotes. A block runs from a `>>>` line to the next blank line (prompts and their outputs).
    """
    out, block, in_fence = [], [], False

    def flush():
        if block:
            out.extend(["```pycon", *block, "```"])
            block.clear()

    for line in text.split("\n"):
        if line.startswith(("```", "~~~")) and not block:
            in_fence = not in_fence
        if not in_fence and (line.startswith(">>>") or (block and line.strip())):
            block.append(line)
            continue
        flush()
        out.append(line)
    flush()
    return "\n".join(out)


if griffe is not None:

    class DoctestFences(griffe.Extension):
        """Renders Keras-style `Example:` doctests as code in the API reference."""

        def on_object(self, *, obj, **kwargs) -> None:
            if obj.docstring is not None and ">>>" in obj.docstring.value:
                obj.docstring.value = fence_doctests(obj.docstring.value)
