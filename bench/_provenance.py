"""Where a bench result came from, and whether the code it measured has changed since.

Every script under bench/ writes `stamp()` into its JSON as `"provenance"`: the commit (full and short), whether the
measured files had uncommitted changes, the UTC date, the host (`tfopt.measure.host.this_host`), the command, the
Python and package versions, and the files the figures depend on (`measured_paths`).

A result is **stale** when its script, or a file its figures depend on, changed in a commit after the one it
recorded (`git log <commit>..HEAD -- <paths>`). Run a bench from a committed tree: a result stamped `dirty` records
the commit it started from, so the commit that brings the uncommitted code in makes it stale.

The files a result depends on: the script; the bench modules it imports (bench_qat uses bench_prune's training);
and the tfopt modules reached by following imports (module-level and in-function, read from the source, not run)
from the script's own `tfopt` imports and from its entries in `MEASURES`, the one hand-kept map from a script to
the capabilities it calls through the `tfopt.X` namespace, which the source cannot show. Following imports keeps
the rule sound when code moves into new files; `PLUMBING` (writing files, error classes, the lazy namespace, the
version, the host line) is left out because it cannot move a figure. A script that imports bare `tfopt` and has no
`MEASURES` entry depends on all of `tfopt/`, so a new script is never silently fresh.

    >>> payload = {"rows": []}
    >>> payload["provenance"] = stamp(script=__file__)   # doctest: +SKIP
"""

from __future__ import annotations

import datetime
import glob
import importlib.metadata
import os
import platform
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("tensorflow", "keras", "ai-edge-litert", "tf-keras", "tensorflow-model-optimization", "numpy")
BACKFILLED = "backfilled from git history"

# Entry points per capability (a folder means every module under it); imports are followed from these.
_TRAIN = ("tfopt/demo.py", "tfopt/datasets.py")  # demo.build_cnn / train_cnn and the datasets: what the bench trains
_CONVERT = ("tfopt/export/convert.py",)
_RUNTIME = ("tfopt/measure/benchmark.py", "tfopt/measure/evaluate.py")  # the LiteRT path that times and scores
_MICRO = ("tfopt/export/micro.py", "tfopt/measure/_micro_runner.py")
_LEGACY = ("tfopt/_legacy",)  # the tfmot (tf_keras) side of a side-by-side bench

MEASURES: dict[str, tuple[str, ...]] = {
    "bench_channels.py": ("tfopt/compress/channels.py",),
    "bench_cluster.py": ("tfopt/compress/cluster.py", *_LEGACY, *_CONVERT, *_RUNTIME, *_TRAIN),
    "bench_cluster_coverage.py": ("tfopt/compress/cluster.py", *_LEGACY, *_CONVERT),
    "bench_demo.py": (*_TRAIN, "tfopt/search"),
    "bench_distill.py": ("tfopt/compress/distill.py",),
    "bench_fuzz.py": ("tfopt/analyze", "tfopt/_cli/checks.py", "tfopt/datasets.py", "tfopt/_legacy/loading.py"),
    "bench_measure.py": (*_RUNTIME, "tfopt/measure/sweep.py", *_TRAIN, *_CONVERT),
    "bench_mediapipe.py": (*_RUNTIME, "tfopt/analyze/flatbuffer.py"),
    "bench_micro.py": (*_MICRO, *_TRAIN, *_CONVERT, *_RUNTIME, "tfopt/export/calibration.py"),
    "bench_micro_memory.py": (*_MICRO, *_CONVERT, *_RUNTIME, "tfopt/api.py", "tfopt/datasets.py"),
    "bench_optimize.py": ("tfopt/search", "tfopt/api.py", *_TRAIN),
    "bench_precision.py": (*_CONVERT, *_RUNTIME, *_TRAIN, "tfopt/export/calibration.py"),
    "bench_profile_lowrank.py": ("tfopt/analyze/profile.py", "tfopt/compress/lowrank.py"),
    "bench_prune.py": ("tfopt/compress/prune.py", *_LEGACY, *_CONVERT, *_RUNTIME, *_TRAIN),
    "bench_prune_coverage.py": ("tfopt/compress/prune.py", *_CONVERT, *_RUNTIME),
    "bench_qat.py": ("tfopt/api.py", "tfopt/compress/qat.py", *_LEGACY, *_CONVERT, "tfopt/measure/parity.py",
                     "tfopt/analyze/flatbuffer.py", "tfopt/datasets.py"),
    "bench_qat_coverage.py": ("tfopt/compress/qat.py", *_CONVERT),
    "bench_quantization.py": (*_CONVERT, *_RUNTIME, *_MICRO, *_TRAIN),
    "bench_realworld.py": (*_CONVERT, *_RUNTIME, *_MICRO, "tfopt/measure/delegates.py", "tfopt/measure/sweep.py"),
}
# Files that cannot move a figure: writing files, error classes and messages, the lazy namespace, the version,
# registration for load_model, optional-dependency messages, the host line.
PLUMBING = frozenset({
    "tfopt/__init__.py", "tfopt/_io.py", "tfopt/errors.py", "tfopt/_version.py", "tfopt/_registration.py",
    "tfopt/_extras.py", "tfopt/measure/host.py",
})


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _module_file(module: str) -> str | None:
    path = module.replace(".", "/")
    for candidate in (f"{path}.py", f"{path}/__init__.py"):
        if os.path.isfile(os.path.join(ROOT, candidate)):
            return candidate
    return None


def _imports(path: str) -> tuple[set[str], bool]:
    """(repository files `path` imports from tfopt or bench/, whether it imports bare `tfopt`), read with ast."""
    import ast

    with open(os.path.join(ROOT, path), encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), filename=path)
    package = os.path.dirname(path).replace("/", ".")
    modules, bare = set(), False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
            bare = bare or any(alias.name == "tfopt" and not alias.asname for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x / from .y import z
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            modules.add(base)
            modules.update(f"{base}.{alias.name}" for alias in node.names)
    files = set()
    for module in modules:
        if module.split(".")[0] == "tfopt":
            found = _module_file(module)
        else:  # a sibling bench module (bench_qat imports bench_prune)
            found = f"bench/{module}.py" if os.path.isfile(os.path.join(ROOT, "bench", f"{module}.py")) else None
        if found and found != "bench/_provenance.py":
            files.add(found)
    return files, bare


def _python_files(entry: str) -> list[str]:
    if os.path.isdir(os.path.join(ROOT, entry)):
        return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, entry, "**", "*.py"),
                                                                   recursive=True))
    return [entry] if os.path.isfile(os.path.join(ROOT, entry)) else []


def measured_paths(script: str) -> list[str]:
    """The script and every file its figures depend on (see the module docstring), sorted after the script.

    >>> paths = measured_paths("bench_distill.py")
    >>> paths[0], "tfopt/compress/distill.py" in paths, "tfopt/compress/finetune.py" in paths  # imported by distill
    ('bench/bench_distill.py', True, True)
    """
    name = os.path.basename(script)
    start = f"bench/{name}"
    todo = [entry for item in MEASURES.get(name, ()) for entry in _python_files(item)]
    seen: set[str] = set()
    if os.path.isfile(os.path.join(ROOT, start)):
        direct, bare = _imports(start)
        todo += sorted(direct)
        if bare and name not in MEASURES:
            todo += _python_files("tfopt")
    while todo:
        path = todo.pop()
        if path in seen or path == start:
            continue
        seen.add(path)
        todo += sorted(_imports(path)[0])
    return [start, *sorted(seen - PLUMBING, key=lambda p: (not p.startswith("bench/"), p))]


def _versions() -> dict[str, str | None]:
    found = {}
    for package in PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def _host() -> str:
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from tfopt.measure.host import this_host

    return this_host()


def stamp(*, script: str, command: str | None = None) -> dict:
    """The provenance record a bench script writes into its JSON as `"provenance"`.

    Args:
        script: the bench script (pass `__file__`).
        command: the command that ran it. Defaults to `python bench/<script> <sys.argv[1:]>`.

    Returns:
        A dict: commit, commit_short, dirty (measured files with uncommitted changes, untracked ones included),
        date (UTC, ISO 8601), host,
        command, script, measures, python, packages.
    """
    name = os.path.basename(script)
    paths = measured_paths(name)
    commit = _git("rev-parse", "HEAD")
    changed = [_git("diff", "--name-only", "HEAD", "--", *paths),
               _git("ls-files", "--others", "--exclude-standard", "--", *paths)]
    return {
        "commit": commit,
        "commit_short": commit[:12] if commit else None,
        "dirty": sorted({line for text in changed if text for line in text.splitlines()}),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": _host(),
        "command": command or " ".join(["python", f"bench/{name}", *sys.argv[1:]]),
        "script": f"bench/{name}",
        "measures": paths[1:],
        "python": platform.python_version(),
        "packages": _versions(),
    }


def recorded(payload: dict, json_name: str) -> tuple[str | None, str]:
    """(commit, script) a result JSON records; the script defaults to bench/<json stem>.py."""
    provenance = payload.get("provenance")
    if isinstance(provenance, dict):
        commit, script = provenance.get("commit"), provenance.get("script")
    else:
        commit, script = payload.get("commit"), payload.get("script")
    return commit, script or f"bench/{os.path.splitext(json_name)[0]}.py"


def is_shallow() -> bool:
    """True in a shallow clone, where commits before the cut cannot be compared."""
    return _git("rev-parse", "--is-shallow-repository") == "true"


def stale_because(path: str) -> list[str]:
    """The commits (`<short hash> <subject>`) after the recorded one that changed what a result measured.

    Empty when the result is current. Raises ValueError when the JSON names no commit or git does not know it.
    """
    import json

    with open(path, encoding="utf-8") as handle:
        payload = json.load(handle)
    name = os.path.basename(path)
    commit, script = recorded(payload, name)
    if not commit:
        raise ValueError(f"{name} records no commit: re-run {script} (it writes 'provenance').")
    if _git("cat-file", "-e", f"{commit}^{{commit}}") is None:
        raise ValueError(f"{name} records commit {commit[:12]}, which this clone does not hold.")
    log = _git("log", "--format=%h %<(60,trunc)%s", f"{commit}..HEAD", "--", *measured_paths(script))
    if log is None:
        raise ValueError(f"git log failed for {name} (commit {commit[:12]}).")
    return [line for line in log.splitlines() if line]


def merged(payloads: list[dict], *, script: str, ran: bool) -> dict:
    """The provenance of a JSON assembled from several runs (`--merge`): the oldest run's record, since the result is
    as stale as its oldest row, with this merge's command as `merged_by`.

    Args:
        payloads: the JSON payloads merged in (each with its own provenance).
        script: the bench script (pass `__file__`).
        ran: whether this process measured rows of its own too (then its own stamp takes part).

    A payload that names no commit makes the merge name none either (`"commit": None`): its rows' code is unknown.
    """
    now = stamp(script=script)
    records = [now] if ran else []
    for payload in payloads:
        provenance = payload.get("provenance")
        if isinstance(provenance, dict):
            records.append(provenance)
        elif payload.get("commit"):
            records.append({"commit": payload["commit"], "provenance": provenance, "date": None})
        else:
            return {**now, "commit": None, "commit_short": None, "merged_by": now["command"]}
    if not records:
        return now
    oldest = min(records, key=lambda record: record.get("date") or "")
    keys = ("commit", "commit_short", "dirty", "date", "host", "command", "python", "packages")
    return {**now, **{key: oldest.get(key) for key in keys}, "merged_by": now["command"]}


HISTORICAL = re.compile(r"<!--\s*bench:\s*historical\s+([\w.-]+\.json)\s*-->")


def pages(root: str = ROOT) -> dict[str, str]:
    """README.md and docs/**/*.md by path relative to the repository: the pages that may quote a result."""
    docs = sorted(glob.glob(os.path.join(root, "docs", "**", "*.md"), recursive=True))
    paths = [os.path.join(root, "README.md"), *docs]
    return {os.path.relpath(p, root): open(p, encoding="utf-8").read() for p in paths if os.path.isfile(p)}


def quoted_on(name: str, script: str, texts: dict[str, str]) -> list[str]:
    """Pages that quote a result (name its JSON or its script's file), unless marked historical for that JSON.

    The marker is `<!-- bench: historical X.json -->` anywhere on the page.
    """
    quoting, script_name = [], os.path.basename(script)
    for page, text in texts.items():
        historical = set(HISTORICAL.findall(text))
        body = HISTORICAL.sub("", text)
        if name not in historical and (name in body or script_name in body):
            quoting.append(page)
    return quoting


def report(root: str = ROOT) -> list[dict]:
    """One row per result under bench/results/: name, script, command, stale commits, pages quoting it."""
    import json

    texts, rows = pages(root), []
    for path in sorted(glob.glob(os.path.join(root, "bench", "results", "*.json"))):
        name = os.path.basename(path)
        with open(path, encoding="utf-8") as handle:
            payload = json.load(handle)
        commit, script = recorded(payload, name)
        provenance = payload.get("provenance")
        command = provenance.get("command") if isinstance(provenance, dict) else None
        command = command or payload.get("command") or (payload.get("commands") or [None])[0]
        rows.append({"name": name, "script": script, "commit": commit, "command": command or f"python {script}",
                     "stale": stale_because(path), "quoted_on": quoted_on(name, script, texts)})
    return rows


if __name__ == "__main__":  # python bench/_provenance.py: which results are stale, and the command that re-runs each
    for row in report():
        state = f"STALE ({len(row['stale'])} commits, latest {row['stale'][0]})" if row["stale"] else "current"
        quoted = f"quoted on {', '.join(row['quoted_on'])}" if row["quoted_on"] else "not quoted"
        print(f"{row['name']}: {state}; {quoted}\n    re-run: {row['command']}")
