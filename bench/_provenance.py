"""Where a bench result came from, and whether the code it measured has changed since.

Every script under bench/ writes `stamp()` into its JSON as `"provenance"`: the commit (full and short), whether the
measured files had uncommitted changes, the UTC date, the host (`tfopt.measure.host.this_host`), the command, the
Python and package versions, and the tfopt files the figures depend on (`MEASURES`).

A result is **stale** when its script, or one of the tfopt files in `MEASURES[script]`, changed in a commit after the
one it recorded (`git log <commit>..HEAD -- <paths>`). Run a bench from a committed tree: a result stamped `dirty`
records the commit it started from, so the commit that brings the uncommitted code in makes it stale.

`MEASURES` is the one map from a script to the code its figures depend on: the technique, the converter and the
runtime path it times or scores, and the data and training helpers it calls. Plumbing that cannot move a figure
(`tfopt/_io.py` writing the JSON, errors, the CLI) is left out. A script missing from the map depends on all of
`tfopt/`, so a new script is never silently fresh; add it here when you add the script.

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

# Groups of tfopt files (paths relative to the repository; a folder means every file under it).
_DATA = ("tfopt/datasets.py",)
_TRAIN = ("tfopt/demo.py", "tfopt/datasets.py")  # demo.build_cnn / train_cnn: the model the bench measures
_CONVERT = ("tfopt/export/convert.py", "tfopt/export/_converter.py", "tfopt/export/calibration.py")
_RUNTIME = (  # the LiteRT path that times and scores a .tflite
    "tfopt/measure/benchmark.py", "tfopt/measure/_runner.py", "tfopt/measure/_serve.py", "tfopt/measure/_worker.py",
    "tfopt/measure/evaluate.py", "tfopt/measure/metrics.py",
)
_MICRO = ("tfopt/export/micro.py", "tfopt/measure/_micro_runner.py")
_PRUNE = (
    "tfopt/compress/prune.py", "tfopt/compress/prune_layer.py", "tfopt/compress/prune_plan.py",
    "tfopt/compress/schedules.py", "tfopt/compress/select.py",
)
_CLUSTER = ("tfopt/compress/cluster.py", "tfopt/compress/cluster_layer.py", "tfopt/compress/kmeans.py",
            "tfopt/compress/select.py")
_QAT = (
    "tfopt/compress/qat.py", "tfopt/compress/qat_graph.py", "tfopt/compress/qat_layers.py",
    "tfopt/compress/qat_native.py", "tfopt/compress/qat_prepare.py", "tfopt/compress/qat_report.py",
    "tfopt/compress/batchnorm.py",
)
_LEGACY = ("tfopt/_legacy", "tfopt/_keras.py")  # the tfmot (tf_keras) side of a side-by-side bench
_READERS = (
    "tfopt/analyze/flatbuffer.py", "tfopt/analyze/profile.py", "tfopt/analyze/sparsity.py", "tfopt/_keras.py",
    "tfopt/_cli/checks.py", "tfopt/datasets.py", "tfopt/_legacy/loading.py",
)

MEASURES: dict[str, tuple[str, ...]] = {
    "bench_channels.py": ("tfopt/compress/channels.py", "tfopt/compress/channel_graph.py"),
    "bench_cluster.py": (*_CLUSTER, *_LEGACY, *_CONVERT, *_RUNTIME, *_TRAIN, "tfopt/analyze/cluster_report.py"),
    "bench_cluster_coverage.py": (*_CLUSTER, *_LEGACY, *_CONVERT, "tfopt/_keras.py"),
    "bench_demo.py": (*_TRAIN, *_CONVERT, *_RUNTIME, "tfopt/report.py", "tfopt/search"),
    "bench_distill.py": ("tfopt/compress/distill.py",),
    "bench_fuzz.py": _READERS,
    "bench_measure.py": (*_RUNTIME, "tfopt/measure/_isolate.py", "tfopt/measure/sweep.py", *_TRAIN, *_CONVERT),
    "bench_mediapipe.py": (*_RUNTIME, "tfopt/analyze/flatbuffer.py"),
    "bench_micro.py": (*_MICRO, *_TRAIN, *_CONVERT, *_RUNTIME),
    "bench_optimize.py": ("tfopt/search", "tfopt/api.py", "tfopt/config.py", "tfopt/compress", *_CONVERT, *_RUNTIME,
                          *_TRAIN),
    "bench_profile_lowrank.py": ("tfopt/analyze/profile.py", "tfopt/analyze/flops.py", "tfopt/analyze/cost_graph.py",
                                 "tfopt/compress/lowrank.py"),
    "bench_prune.py": (*_PRUNE, *_LEGACY, *_CONVERT, *_RUNTIME, *_TRAIN, "tfopt/analyze/sparsity.py",
                       "tfopt/compress/batchnorm.py", "tfopt/compress/sensitivity.py"),
    "bench_prune_coverage.py": (*_PRUNE, *_CONVERT, *_RUNTIME, "tfopt/analyze/sparsity.py", "tfopt/_keras.py"),
    "bench_qat.py": (*_QAT, *_LEGACY, *_CONVERT, "tfopt/measure/parity.py", "tfopt/analyze/flatbuffer.py", *_DATA,
                     "bench/bench_prune.py"),
    "bench_qat_coverage.py": (*_QAT, *_CONVERT, "tfopt/measure/parity.py"),
    "bench_quantization.py": (*_CONVERT, *_RUNTIME, *_MICRO, "tfopt/measure/parity.py", *_TRAIN),
    "bench_realworld.py": (*_CONVERT, *_RUNTIME, *_MICRO, "tfopt/measure/delegates.py", "tfopt/measure/sweep.py"),
}


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def measured_paths(script: str) -> list[str]:
    """The script itself and the tfopt files its figures depend on (all of `tfopt/` when it is not in `MEASURES`)."""
    name = os.path.basename(script)
    return [f"bench/{name}", *dict.fromkeys(MEASURES.get(name, ("tfopt",)))]


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
    """Pages that quote a result (name its JSON or its script) without marking it `<!-- bench: historical X.json -->`."""
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
