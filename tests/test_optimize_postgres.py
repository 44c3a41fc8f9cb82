"""tfopt optimize on a real PostgreSQL server (Debian's postgresql package), started by the test itself:
two processes on one study through `--storage postgresql://...` split the budget with no trial run twice."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from test_optimize_resume import _make_inputs



def _server_bin() -> str | None:
    """The bin folder of the newest PostgreSQL server Debian installed (/usr/lib/postgresql/<version>/bin)."""
    import glob

    def version(folder: str) -> tuple[int, ...]:
        name = os.path.basename(os.path.dirname(folder))  # "15", "16", "9.6"
        return tuple(int(n) for n in name.split(".") if n.isdigit())

    found = [os.path.dirname(p) for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    return max(found, key=version) if found else None


PG_BIN = _server_bin()

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(command: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: drop to the `postgres` user when we are root."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


@pytest.fixture()
def postgres(tmp_path):
    if PG_BIN is None:
        message = "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin: apt-get install postgresql"
        if os.environ.get("TFOPT_CI") == "1":  # CI installs it: a missing server there is a failure, not a skip
            pytest.fail(message)
        pytest.skip(message)
    # Outside pytest's root-only tmp tree, so the postgres user can reach it.
    folder = tempfile.mkdtemp(prefix="tfopt-pg-")
    if os.geteuid() == 0:
        shutil.chown(folder, user="postgres")
    data, port = os.path.join(folder, "data"), _free_port()
    subprocess.run(_as_postgres([f"{PG_BIN}/initdb", "-D", data, "-U", "tfopt", "--auth=trust", "-E", "UTF8"]),
                   check=True, capture_output=True)
    server = subprocess.Popen(
        _as_postgres([f"{PG_BIN}/postgres", "-D", data, "-p", str(port), "-k", folder, "-h", "127.0.0.1"]),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"postgresql://tfopt@127.0.0.1:{port}/postgres"
    import sqlalchemy

    deadline = time.time() + 60
    while True:
        try:
            sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg2://")).connect().close()
            break
        except Exception:  # noqa: BLE001 - the server is still starting
            if time.time() > deadline or server.poll() is not None:
                pytest.fail("PostgreSQL did not start")
            time.sleep(0.5)
    yield url
    server.terminate()
    server.wait(timeout=60)
    shutil.rmtree(folder, ignore_errors=True)


def test_two_machines_share_a_postgres_study(postgres, tmp_path):
    path, npz = _make_inputs(str(tmp_path))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")

    def command(out):
        return [sys.executable, "-m", "tfopt.cli", "optimize", path, "--data", npz, "--output", str(tmp_path / out),
                "--max_trials", "4", "--storage", postgres, "--max_accuracy_drop", "2"]

    # Two "machines": separate processes and output folders, one database.
    first = subprocess.Popen(command("a"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    second = subprocess.Popen(command("b"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    for process in (first, second):
        _, err = process.communicate(timeout=900)
        assert process.returncode == 0, err.decode()[-2000:]
    rows = []
    for out in ("a", "b"):
        rows += [json.loads(l) for l in open(tmp_path / out / "trials.jsonl")]
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    numbers = [r["number"] for r in complete]
    assert len(numbers) == len(set(numbers)) == 4  # the budget split, nothing run twice
    assert len({json.dumps(r["params"], sort_keys=True) for r in complete}) == 4
    for out in ("a", "b"):
        report = json.load(open(tmp_path / out / "report.json"))
        assert report["trials_completed"] == 4 and report["best"] is not None


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def test_a_worker_killed_mid_trial_on_postgres_is_run_again_once(postgres, tmp_path):
    """Two workers on one PostgreSQL study; one is killed with SIGKILL while it runs a trial. The other finishes
    the budget, runs the lost recipe again once, and counts nothing twice."""
    import optuna
    from optuna.trial import TrialState

    path, npz = _make_inputs(str(tmp_path))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")

    def command(out):  # level 1: six conversions, a budget of six, so the re-run fits in it
        return [sys.executable, "-m", "tfopt.cli", "optimize", path, "--data", npz, "--output", str(tmp_path / out),
                "--max_trials", "6", "--storage", postgres, "--max_accuracy_drop", "2"]

    doomed = subprocess.Popen(command("a"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    survivor = subprocess.Popen(command("b"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    engine_url = postgres.replace("postgresql://", "postgresql+psycopg2://")
    victim, deadline = None, time.time() + 600
    while victim is None and time.time() < deadline:
        try:
            study = optuna.load_study(study_name="tfopt-optimize", storage=engine_url)
            for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                pid = trial.user_attrs.get("pid")
                if pid and _parent_of(int(pid)) == doomed.pid:  # the doomed command's worker runs this trial
                    victim = trial.number
        except Exception:  # noqa: BLE001 - the study is not created yet
            pass
        if doomed.poll() is not None:
            pytest.fail("the first worker finished before it could be killed mid-trial")
        time.sleep(0.1)
    assert victim is not None, "no trial of the first worker was caught running"
    os.kill(doomed.pid, 9)  # its supervised child dies with it
    doomed.wait(timeout=60)
    _, err = survivor.communicate(timeout=900)
    assert survivor.returncode == 0, err.decode()[-2000:]

    study = optuna.load_study(study_name="tfopt-optimize", storage=engine_url)
    trials = study.get_trials(deepcopy=False)
    assert {t.number: t.state for t in trials}[victim] == TrialState.FAIL
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    again = [t for t in complete if t.user_attrs.get("retry_of") == victim]
    assert len(again) == 1 and again[0].params == next(t for t in trials if t.number == victim).params
    params = [json.dumps(t.params, sort_keys=True) for t in complete]
    assert len(complete) == 6 and len(set(params)) == 6  # the budget, every recipe once, nothing counted twice
    report = json.load(open(tmp_path / "b" / "report.json"))
    assert report["trials_completed"] == 6 and report["best"] is not None
    assert any(row["number"] == victim and "run again as trial" in row["error"] for row in report["failed_trials"])
