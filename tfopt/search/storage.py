"""Where a study lives: an embedded journal file in the output folder by default, or any Optuna storage URL.

Also the bookkeeping that makes resume and several workers safe: finding
trials left RUNNING by a killed process on this host, counting the budget,
and appending finished trials to `trials.jsonl` under a file lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from typing import Any

STUDY_NAME = "tfopt-optimize"
JOURNAL = "study.journal"


def open_storage(url: str | None, output_dir: str):
    """An Optuna storage: `url` (sqlite / postgresql / mysql ... or a journal file path), or `DIR/study.journal`."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if url is None or url.endswith(".journal") or url.startswith("journal:"):
        path = os.path.join(output_dir, JOURNAL) if url is None else url.removeprefix("journal:")
        return JournalStorage(JournalFileBackend(os.path.abspath(path)))
    return _rdb_storage(_driver(url))


def _rdb_storage(url: str, *, attempts: int = 6):
    """An Optuna RDBStorage, created again when another machine was creating the same schema at that moment.

    Two workers that start together on an empty database both issue `CREATE TYPE` / `CREATE TABLE`; the
    database lets one win and the other fails with a duplicate-key error. Once the winner is done, the
    schema exists and the loser opens it as is.
    """
    import random
    import time

    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        except (IntegrityError, ProgrammingError, OperationalError) as err:
            racing = "already exists" in str(err) or "duplicate key" in str(err)
            if not racing or attempt == attempts - 1:
                raise
            time.sleep(0.5 + random.random() * (attempt + 1))


def _driver(url: str) -> str:
    """`postgresql://` names psycopg 3 in SQLAlchemy 2.1; use psycopg2 when only that driver is installed."""
    import importlib.util

    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
        if importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def me() -> dict[str, Any]:
    """This process, as recorded on the trials it runs."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


ORPHANED = "orphaned:"  # study user attribute `orphaned:<trial number>`: failed because its process died
CRASHED = "crashed:"  # `crashed:<trial number>` = reason: its process died while it was a re-run of an orphan
RETRY_OF = "retry_of"  # trial user attribute: the number of the orphaned trial this one runs again
CRASH_ENV = "TFOPT_LAST_CRASH"  # what the supervisor saw kill the previous process (e.g. "SIGSEGV")


def fail_orphans(study) -> list[tuple[int, dict[str, Any]]]:
    """Marks FAIL the RUNNING trials whose process (on this host) is gone; returns `(number, params)` to re-run.

    A trial started on another machine is left alone: only its own host can tell it is dead (a
    storage with heartbeats also fails trials whose heartbeat went stale, on any host). Optuna's
    public API only: the study records the orphan (`orphaned:<number>`), `study.tell` fails it.

    An orphan is run again once (enqueue it with `user_attrs={RETRY_OF: number}`). When the re-run's
    process dies too, the recipe itself kills the process (a native crash inside TensorFlow): it is
    recorded as `crashed:<number>` with the reason, counts against the budget, and is not run again.
    """
    import warnings

    import optuna
    from optuna.trial import TrialState

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # a no-op unless the storage records heartbeats
    host = socket.gethostname()
    redo = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get("host") != host or attrs.get("pid") is None or _alive(int(attrs["pid"])):
            continue
        seen = os.environ.get(CRASH_ENV) or "killed, or a native crash"
        if attrs.get(RETRY_OF) is not None:
            study.set_user_attr(f"{CRASHED}{trial.number}", f"its process died twice running this recipe ({seen})")
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            continue
        study.set_user_attr(f"{ORPHANED}{trial.number}", f"its process died ({seen})")
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        redo.append((trial.number, dict(trial.params)))
    return redo


def failures(study) -> list[dict[str, Any]]:
    """The trials that failed, by number: `number`, `params` and the `error`: an exception's first line,
    a process that died twice on the recipe, or a process that died once (saying which trial ran the
    recipe again, or that the budget ended first)."""
    from optuna.trial import TrialState

    attrs = study.user_attrs
    trials = study.get_trials(deepcopy=False)
    rerun = {t.user_attrs[RETRY_OF]: t.number for t in trials if t.user_attrs.get(RETRY_OF) is not None
             and t.state != TrialState.WAITING}
    out = []
    for trial in trials:
        if trial.state != TrialState.FAIL:
            continue
        reason = trial.user_attrs.get("error") or attrs.get(f"{CRASHED}{trial.number}")
        orphan = attrs.get(f"{ORPHANED}{trial.number}")
        if not reason and orphan:
            died = orphan if isinstance(orphan, str) else "its process died"
            again = rerun.get(trial.number)
            reason = f"{died}; run again as trial {again}" if again is not None else f"{died}; the budget ended before it ran again"
        if reason:
            out.append({"number": trial.number, "params": dict(trial.params), "error": reason})
    return sorted(out, key=lambda row: row["number"])


def used_budget(study) -> int:
    """Trials that count against the budget: finished, running, or failed by an error (not orphaned)."""
    from optuna.trial import TrialState

    orphaned = {key for key in study.user_attrs if key.startswith(ORPHANED)}
    count = 0
    for trial in study.get_trials(deepcopy=False):
        if trial.state in (TrialState.COMPLETE, TrialState.RUNNING):
            count += 1
        elif trial.state == TrialState.FAIL and f"{ORPHANED}{trial.number}" not in orphaned:
            count += 1 if not trial.user_attrs.get("orphaned") else 0  # studies from earlier releases
    return count


def completed(study) -> list:
    """The COMPLETE trials, by number."""
    from optuna.trial import TrialState

    return sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number)


def running(study) -> list:
    """The RUNNING trials (this process's and other workers'), by number."""
    from optuna.trial import TrialState

    return sorted(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)), key=lambda t: t.number)


def append_jsonl(path: str, row: dict[str, Any]) -> None:
    """Appends one JSON line under an exclusive lock (several workers may write the same file)."""
    line = json.dumps(row, sort_keys=True, default=float) + "\n"
    with open(path, "a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """The rows of a trials.jsonl; a line cut short by a killed process is skipped."""
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows
