"""Bench results that say when they were made, and a check that lists the stale ones.

The rule (bench/_provenance.py holds the code and the script -> measured-code map, `MEASURES`):

- Every JSON under bench/results/ names the commit it was measured at: `"provenance": {"commit": ...}` written by
  `stamp()`, or a top-level `"commit"` with `"provenance": "backfilled from git history"` for results older than the
  stamp (the commit that last wrote the JSON; no commit is invented). A JSON without one fails.
- A result is **stale** when its script or a tfopt file its figures depend on (`MEASURES`) changed in a commit after
  the recorded one (`git log <commit>..HEAD -- <paths>`). Stale results are listed (printed in the test output), not
  failed: a refactor that moves a file makes old figures unproven, not wrong, and CI must not stay red for that.
- A stale result **fails** only when docs/*.md or README.md quote it: the page names the JSON (`X.json`) or its
  script (`X.py`). A quoted figure presents itself as what the code does today. Fix it by re-running the
  script (its JSON records the command) and committing the JSON, or by marking the page's figures as history:
  a visible note plus the marker `<!-- bench: historical X.json -->` on that page, which exempts X.json there.
- Needs git history: in a shallow clone (or without git) the staleness test is skipped and says why.
"""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import _provenance  # noqa: E402

RESULTS = sorted(glob.glob(os.path.join(ROOT, "bench", "results", "*.json")))
def _git_history() -> str | None:
    """Why the staleness check cannot run here, or None when it can."""
    try:
        inside = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=ROOT, capture_output=True,
                                text=True, check=False)
    except OSError:
        return "git is not installed"
    if inside.stdout.strip() != "true":
        return "not a git checkout"
    if _provenance.is_shallow():
        return "shallow clone: the recorded commits may be cut off (git fetch --unshallow to run it)"
    return None


@pytest.mark.parametrize("path", RESULTS, ids=[os.path.basename(p) for p in RESULTS])
def test_every_result_names_its_commit(path):
    payload = json.load(open(path, encoding="utf-8"))
    commit, script = _provenance.recorded(payload, os.path.basename(path))
    assert commit and re.fullmatch(r"[0-9a-f]{40}", commit), f"{os.path.basename(path)}: no full commit hash"
    assert os.path.isfile(os.path.join(ROOT, script)), f"{os.path.basename(path)} names {script}, which is missing"
    provenance = payload.get("provenance")
    if isinstance(provenance, dict):  # written by stamp(): the whole record
        assert {"date", "host", "command", "commit_short", "dirty", "packages"} <= set(provenance)
    else:
        assert provenance == _provenance.BACKFILLED


def test_every_bench_script_stamps_its_result():
    scripts = sorted(glob.glob(os.path.join(ROOT, "bench", "bench_*.py")))
    missing = [os.path.basename(s) for s in scripts
               if not re.search(r"\b(stamp|merged)\(", open(s, encoding="utf-8").read())]
    assert not missing, f"bench scripts that write no provenance (use bench/_provenance.stamp): {missing}"


def test_measured_code_follows_imports_and_leaves_plumbing_out():
    distill = _provenance.measured_paths("bench_distill.py")
    assert distill[0] == "bench/bench_distill.py"
    assert {"tfopt/compress/distill.py", "tfopt/compress/finetune.py"} <= set(distill)  # finetune: imported by distill
    assert not set(distill) & _provenance.PLUMBING
    assert "bench/bench_prune.py" in _provenance.measured_paths("bench_qat.py")  # a sibling bench module it imports


def test_quoted_on_reads_names_scripts_and_the_historical_marker():
    pages = {
        "docs/a.md": "From `bench/bench_x.py` (`bench/results/x.json`): 3.1x faster.",
        "docs/b.md": "Old figures. <!-- bench: historical x.json -->\nFrom bench/results/x.json: 2x.",
        "docs/c.md": "Nothing measured here.",
        "docs/d.md": "Run bench_x_more.py for more.",  # another script whose name starts the same
    }
    assert _provenance.quoted_on("x.json", "bench/bench_x.py", pages) == ["docs/a.md"]
    assert _provenance.quoted_on("y.json", "bench/bench_y.py", pages) == []
    assert _provenance.quoted_on("z.json", "bench/bench_x.py", pages) == ["docs/a.md"]  # its script is quoted


def test_stale_results_quoted_in_the_docs(capsys):
    reason = _git_history()
    if reason:
        pytest.skip(reason)
    pages, stale, failing = _provenance.pages(), {}, {}
    for path in RESULTS:
        name = os.path.basename(path)
        commits = _provenance.stale_because(path)
        if not commits:
            continue
        _, script = _provenance.recorded(json.load(open(path, encoding="utf-8")), name)
        stale[name] = commits
        quoting = _provenance.quoted_on(name, script, pages)
        if quoting:
            failing[name] = (quoting, script, commits)
    with capsys.disabled():
        for name, commits in stale.items():
            print(f"\nstale bench result {name}: {len(commits)} later commit(s) changed its code, e.g. {commits[0]}")
    lines = [
        f"{name} is quoted on {', '.join(pages_)} but {len(commits)} commit(s) since changed what it measured "
        f"(latest: {commits[0]}): re-run {script} and commit its JSON, or mark the page "
        f"`<!-- bench: historical {name} -->` with a visible note"
        for name, (pages_, script, commits) in failing.items()
    ]
    assert not lines, "\n".join(lines)
