"""The study bookkeeping of `tfopt.optimize` through Optuna's public API: orphans, budget, resume."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

optuna = pytest.importorskip("optuna")

from tfopt.search import storage  # noqa: E402


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("url", [None, "sqlite"], ids=["journal", "sqlite"])
def test_storage_fails_orphans_of_dead_processes_and_frees_their_budget(tmp_path, url, monkeypatch):
    from optuna.trial import TrialState

    url = f"sqlite:///{tmp_path}/s.db" if url == "sqlite" else None
    study = optuna.create_study(storage=storage.open_storage(url, str(tmp_path)), study_name=storage.STUDY_NAME,
                                directions=["minimize", "minimize"])
    done = study.ask()
    done.suggest_categorical("ptq", ["int8", "float16"])
    study.tell(done, [0.0, 1.0])
    failed = study.ask()
    study.tell(failed, state=TrialState.FAIL)  # an error: counts
    dead = study.ask()
    dead.suggest_categorical("ptq", ["int8", "float16"])
    chosen = dead.params["ptq"]
    dead.set_user_attr("host", socket.gethostname())
    dead.set_user_attr("pid", _dead_pid())
    alive = study.ask()
    alive.set_user_attr("host", socket.gethostname())
    alive.set_user_attr("pid", storage.me()["pid"])
    elsewhere = study.ask()
    elsewhere.set_user_attr("host", "another-machine")
    elsewhere.set_user_attr("pid", _dead_pid())
    assert storage.used_budget(study) == 5

    assert storage.fail_orphans(study) == [(dead.number, {"ptq": chosen})]
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    assert states[dead.number] == TrialState.FAIL
    assert states[alive.number] == states[elsewhere.number] == TrialState.RUNNING
    assert storage.used_budget(study) == 4  # the orphan does not count
    assert storage.fail_orphans(study) == []  # and is failed once
    [orphan] = storage.failures(study)  # listed: its process died, and it waits for its re-run
    assert orphan["number"] == dead.number and "budget ended before it ran again" in orphan["error"]

    # its re-run dies too: a failure for good, with its reason, counted, not run a third time
    study.enqueue_trial({"ptq": chosen}, user_attrs={storage.RETRY_OF: dead.number})
    again = study.ask()
    again.suggest_categorical("ptq", ["int8", "float16"])
    again.set_user_attr("host", socket.gethostname())
    again.set_user_attr("pid", _dead_pid())
    assert again.user_attrs[storage.RETRY_OF] == dead.number
    monkeypatch.setenv(storage.CRASH_ENV, "SIGSEGV (Segmentation fault)")
    assert storage.fail_orphans(study) == []
    first, row = storage.failures(study)
    assert first["number"] == dead.number and f"run again as trial {again.number}" in first["error"]
    assert row["number"] == again.number and "died twice" in row["error"] and "SIGSEGV" in row["error"]
    assert storage.used_budget(study) == 5


def test_storage_uses_no_private_optuna_attribute():
    import pathlib

    source = pathlib.Path(storage.__file__).read_text()
    assert "._storage" not in source and "._trial_id" not in source
