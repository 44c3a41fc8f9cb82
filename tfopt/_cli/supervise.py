"""Training commands run their TensorFlow work in a supervised child process.

A native crash inside TensorFlow (a segfault, `free(): invalid size` and an
abort) ends a process with a signal, which no Python code in that process can
catch. So `tfopt prune`, `cluster`, `qat`, `distill`, `decompose` (and the
deprecated `quantize`) re-run themselves, with the same flags, in a child
process (`python -m tfopt.cli COMMAND ...`), and this module watches it:

- exit statuses of the child (0, 2 for a user error, 3, 1 for a bug with its
  traceback, 130 after Ctrl-C) are the command's own;
- a death by a signal prints one line naming the signal, the stage the work
  was in and the layer types of the model when known, then:
  - when oneDNN was on (`TF_ENABLE_ONEDNN_OPTS` not `0`), the command says so
    and runs once more with `TF_ENABLE_ONEDNN_OPTS=0`: TensorFlow's oneDNN
    kernels are the known cause on some AVX-512 CPUs (a pretrained
    mini-Xception died in `fit` that way on an AMD EPYC host, also in plain
    Keras, and trained with oneDNN off);
  - when that retry dies too, or oneDNN was already off, the command ends with
    exit status 4 and one `error:` line;
- SIGINT / SIGTERM sent to the command are forwarded to the child (killed
  after a grace period), and the child dies with its parent (`prctl`), so no
  orphan keeps training; output files are written atomically by the child, and
  temporary files of a killed child are removed.

The Python API cannot do this for you: a signal that kills the process kills
your script with it. When `tfopt.qat(...)`, `tfopt.prune(...)` or a `fit` of
their models dies with "Segmentation fault" or "Aborted" (often after
`free(): invalid size`) on a CPU with AVX-512, set the environment variable
before TensorFlow is imported, in the shell or at the very top of the script:

    TF_ENABLE_ONEDNN_OPTS=0 python train.py

    import os
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"   # before `import tensorflow`, `keras` or `tfopt`
    import tfopt

Training is a little slower with oneDNN off (TensorFlow's own CPU kernels) and
numerically equivalent; the .tflite files do not depend on it. To run a
command in-process instead (a debugger, a profiler), set `TFOPT_NO_SUPERVISOR=1`;
a native crash then ends the command with the bare signal again.

A command module uses it in two places:

    def main(args, fv):
        return supervise.run(NAME, args, fv, _work, outputs=(fv.output, fv.json),
                             check=lambda: training.check_call(args, fv, NAME))

    def _work(args, fv):            # runs in the child
        supervise.stage("fine-tuning (fit)", model=model)
        ...
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable

from absl import flags

from tfopt.search.storage import CRASH_ENV  # what killed the previous child (a resumed optimize records it)

CHILD_ENV = "TFOPT_SUPERVISED_CHILD"  # the parent's pid: "run the work here, you are the child"
STATUS_ENV = "TFOPT_SUPERVISE_STATUS"  # a file the child appends its stages to
OPT_OUT_ENV = "TFOPT_NO_SUPERVISOR"  # "1": run in-process (no crash protection)
ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"
EXIT_NATIVE_CRASH = 4
GRACE_SECONDS = 10.0  # after a forwarded SIGINT / SIGTERM, the child has this long before SIGKILL
MAX_LAYER_TYPES = 12

Work = Callable[[list[str], flags.FlagValues], int]


def run(command: str, args: list[str], fv: flags.FlagValues, work: Work, *,
        outputs: Iterable[str | None] = (), check: Callable[[], object] | None = None,
        progress: Callable[[], object] | None = None) -> int:
    """Runs `work(args, fv)` in a supervised child process (or here, when this is the child).

    Args:
        command: the command word (`"prune"`), used to re-run it and in messages.
        args: the positional arguments of the command.
        fv: the parsed flags of the command.
        work: the function doing the command's work; returns the exit status.
        outputs: the command's output paths; temporary files a killed child
            left next to them are removed.
        check: the command's checks that need no TensorFlow (paths, flags, the
            data file), run here before a child starts, so a mistake costs no
            TensorFlow start-up; `work` checks everything again.
        progress: for a resumable command, what the work has done so far
            (see `supervise`). Defaults to `None` (one retry, then exit 4).

    Returns:
        The exit status: the child's own, or 4 when the work died by a signal
        twice (or once with oneDNN already off).
    """
    if _in_child():
        _become_child()
        return int(work(args, fv) or 0)
    if os.environ.get(OPT_OUT_ENV, "").strip() not in ("", "0") or not sys.executable:
        return int(work(args, fv) or 0)
    if check is not None:
        check()
    return supervise(command, child_arguments(command, args, fv), outputs=outputs, progress=progress)


def stage(name: str, *, model=None) -> None:
    """Records what the child is doing now (and the model's layer types) for the parent's crash message.

    Does nothing outside a supervised child, so command code calls it unconditionally.

    Args:
        name: a few words, e.g. `"fine-tuning (fit)"`.
        model: a Keras model (or a list of them) whose layer class names go into the message;
            the first models recorded in a run (the user's, as loaded) are the ones named.
    """
    path = _child_state.get("status")
    if not path:
        return
    record: dict = {"stage": name}
    if model is not None:
        models = model if isinstance(model, (list, tuple)) else [model]
        record["layers"] = sorted({name for one in models for name in layer_types(one)})
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
    except OSError:
        pass  # the message loses a detail; the work goes on


def layer_types(model) -> list[str]:
    """Sorted class names of the layers of `model`, nested models included (InputLayer left out)."""
    names: set[str] = set()
    pending = list(getattr(model, "layers", []))
    while pending:
        layer = pending.pop()
        name = type(layer).__name__
        if name != "InputLayer":
            names.add(name)
        pending.extend(getattr(layer, "layers", []) or [])
        inner = getattr(layer, "layer", None)  # a wrapper's layer
        if inner is not None and hasattr(inner, "weights"):
            names.add(type(inner).__name__)
    return sorted(names)


def child_arguments(command: str, args: list[str], fv: flags.FlagValues) -> list[str]:
    """`COMMAND --flag=value ... -- POSITIONAL...`: the parsed call, spelled with canonical flag names.

    Flags given under a deprecated spelling were moved to their new name while
    parsing (the parent printed the warning), so the child sees only new names.
    """
    aliases = {name for name in list(fv) if hasattr(fv[name], "tfopt_alias_of")}
    spelled: list[str] = []
    for name in sorted(set(fv)):
        flag = fv[name]
        if name in aliases or flag.name != name or not flag.present or flag.value is None:
            continue
        spelled.extend(line for line in flag.serialize().split("\n") if line)
    return [command, *spelled, "--", *args]


def supervise(command: str, arguments: list[str], *, outputs: Iterable[str | None] = (),
              progress: Callable[[], object] | None = None, max_restarts: int = 50) -> int:
    """Runs `python -m tfopt.cli ARGUMENTS` as a child, retries a native crash once with oneDNN off.

    With `progress` (a resumable command such as `optimize`, whose next run skips or records what
    died), a crash with oneDNN already off starts the command again as long as the crash moved the
    work on: `progress()` returns something different from the last crash's (optimize: the trials
    its study has finished or failed). Each restart is said in one line; a crash that moved nothing,
    or more than `max_restarts` restarts, ends with exit status 4.

    Returns the child's exit status, 128 + N after a forwarded signal N, or 4.
    """
    outputs = [path for path in outputs if path and path != "-"]
    onednn_on = os.environ.get(ONEDNN_ENV, "").strip() != "0"
    extra: dict[str, str] = {}
    token = progress() if progress is not None else None
    for restart in range(max_restarts + 1):
        outcome = _attempt(arguments, extra)
        _clean(outputs)
        if outcome.interrupted or outcome.signal is None:
            return outcome.finish(command)
        what = outcome.describe(command)
        extra[CRASH_ENV] = what.removeprefix(f"the {command} process died of ").rstrip(".")
        if onednn_on and extra.get(ONEDNN_ENV) != "0":
            _say(command, "warning", f"{what} Retrying{'' if progress else ' once'} with {ONEDNN_ENV}=0 (TensorFlow's "
                 "oneDNN kernels off, the known cause of such crashes on some AVX-512 CPUs).")
            extra[ONEDNN_ENV] = "0"
            continue
        moved = progress is not None and progress() != token
        if moved and restart < max_restarts:
            token = progress()
            _say(command, "warning", f"{what} The work it was doing is recorded as failed; going on with the rest.")
            continue
        if extra.get(ONEDNN_ENV) == "0" and onednn_on:
            _say(command, "error", f"the retry with {ONEDNN_ENV}=0 died too: {what} This is a crash inside "
                 "TensorFlow, not a mistake in the call. Try another TensorFlow version, a smaller --batch_size, "
                 "or report it with the model.")
        else:
            _say(command, "error", f"{what} TensorFlow's oneDNN kernels were already off ({ONEDNN_ENV}=0), so "
                 "there is nothing to retry; this is a crash inside TensorFlow, not a mistake in the call. Try "
                 "another TensorFlow version, a smaller --batch_size, or report it with the model.")
        return EXIT_NATIVE_CRASH
    return EXIT_NATIVE_CRASH


# ----------------------------------------------------------------------------- one child run


class _Outcome:
    """How one child run ended: its exit status, or the signal that killed it and where."""

    def __init__(self, returncode: int, interrupted: int | None, stage_name: str | None, layers: list[str]):
        self.returncode = returncode
        self.interrupted = interrupted  # the signal the parent forwarded, if any
        self.signal = -returncode if returncode < 0 and not interrupted else None
        self.stage = stage_name
        self.layers = layers

    @property
    def exit_status(self) -> int:
        if self.interrupted:
            return 130 if self.interrupted == signal.SIGINT else 128 + int(self.interrupted)
        return self.returncode if self.returncode >= 0 else 128 - self.returncode

    def finish(self, command: str) -> int:
        """The exit status of a run that did not crash; says "interrupted" when the child could not."""
        if self.interrupted and self.returncode != 130:
            _say(command, "error", f"interrupted ({signal.Signals(self.interrupted).name}); the work was stopped.")
        return self.exit_status

    def describe(self, command: str) -> str:
        try:
            name = signal.Signals(self.signal).name
        except ValueError:
            name = f"signal {self.signal}"
        meaning = signal.strsignal(self.signal) or ""
        hint = " (the system may have run out of memory)" if self.signal == signal.SIGKILL else ""
        where = f" while {self.stage}" if self.stage else " while starting"
        layers = self.layers[:MAX_LAYER_TYPES] + (["..."] if len(self.layers) > MAX_LAYER_TYPES else [])
        about = f"; model layer types: {', '.join(layers)}" if layers else ""
        return f"the {command} process died of {name} ({meaning}){hint}{where}{about}."


def _attempt(arguments: list[str], extra_env: dict[str, str]) -> _Outcome:
    folder = tempfile.mkdtemp(prefix="tfopt-supervise-")  # the child removes it if this process is killed
    status_path = os.path.join(folder, "stages.jsonl")
    env = dict(os.environ)
    env.update(extra_env)
    env[CHILD_ENV] = str(os.getpid())
    env[STATUS_ENV] = status_path
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = package_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        returncode, interrupted = _run_child([sys.executable, "-m", "tfopt.cli", *arguments], env)
        stage_name, layers = _read_stages(status_path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return _Outcome(returncode, interrupted, stage_name, layers)


def _run_child(argv: list[str], env: dict[str, str]) -> tuple[int, int | None]:
    """Starts the child, relays its output when ours is not a real file, forwards SIGINT / SIGTERM.

    Returns (the child's return code, the signal forwarded to it or None).
    """
    stdout, stderr = _real_stdout(), sys.stderr
    for stream in (stdout, sys.stdout, stderr):
        stream.flush()
    out_target, err_target = _target(stdout), _target(stderr)
    proc = subprocess.Popen(argv, env=env, stdout=out_target, stderr=err_target, start_new_session=True)
    relays = [_relay(pipe, stream) for pipe, stream, target in
              ((proc.stdout, stdout, out_target), (proc.stderr, stderr, err_target)) if target is subprocess.PIPE]
    forwarded: list[tuple[int, float]] = []

    def forward(signum, frame) -> None:
        if forwarded:  # a second Ctrl-C: stop now (no wait here: the main loop reaps it)
            proc.kill()
            return
        forwarded.append((signum, time.monotonic()))
        try:
            proc.send_signal(signum)
        except OSError:
            pass

    previous = _install(forward)
    try:
        while True:
            try:
                returncode = proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if forwarded and time.monotonic() - forwarded[0][1] > GRACE_SECONDS:
                    proc.kill()
    finally:
        _kill(proc)
        _restore(previous)
        for relay in relays:
            relay.join(timeout=5)
    return returncode, (forwarded[0][0] if forwarded else None)


def _real_stdout():
    """Our stdout, or the one `--json -` set aside (it sends the parent's prints to stderr; the child does the same)."""
    from tfopt._cli import common

    return common.json_stdout()


def _target(stream):
    """The stream's file descriptor when it has one (the child writes there directly), else a pipe to relay."""
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return subprocess.PIPE


def _relay(pipe, stream) -> threading.Thread:
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def copy() -> None:
        for chunk in iter(lambda: pipe.read1(65536), b""):
            stream.write(decoder.decode(chunk))
            stream.flush()
        stream.write(decoder.decode(b"", final=True))
        pipe.close()

    thread = threading.Thread(target=copy, name="tfopt-relay", daemon=True)
    thread.start()
    return thread


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            proc.kill()
        except OSError:
            pass
        proc.wait()


def _install(handler):
    """Installs `handler` for SIGINT and SIGTERM (main thread only); returns what to restore."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.getsignal(signum)
        signal.signal(signum, handler)
    return previous


def _restore(previous: dict) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def _read_stages(path: str) -> tuple[str | None, list[str]]:
    stage_name, layers = None, []
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None, []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by the crash
        stage_name = record.get("stage", stage_name)
        layers = layers or record.get("layers", [])  # the first list: the user's model as loaded
    return stage_name, layers


def _clean(outputs: list[str]) -> None:
    from tfopt._io import remove_stale_temps

    for path in outputs:
        remove_stale_temps(path)


def _say(command: str, kind: str, message: str) -> None:
    sys.stdout.flush()
    print(f"tfopt {command}: {kind}: {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the child side


_child_state: dict[str, str] = {}  # set once in the child: the status file


def in_child() -> bool:
    """True in the supervised child of a training command (a process that runs that one command)."""
    return bool(_child_state.get("child"))


def _in_child() -> bool:
    return bool(os.environ.get(CHILD_ENV))


def _become_child() -> None:
    """Takes the markers out of the environment (processes this one starts are not children of the
    supervisor) and dies with the parent, so no orphan keeps training after `kill -9` of the command."""
    parent = os.environ.pop(CHILD_ENV, "")
    status = os.environ.pop(STATUS_ENV, "")
    _child_state["child"] = "1"
    if status:
        _child_state["status"] = status
    if parent.isdigit() and int(parent) != os.getpid():
        from tfopt.measure._child import die_with_parent

        die_with_parent(int(parent), cleanup=os.path.dirname(status) if status else None)
