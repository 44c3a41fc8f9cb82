"""What optimize returns and writes: `OptimizeResult`, report.json, report.md and pareto.png."""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Any

from tfopt._io import atomic_write, write_json
from tfopt.search.constraints import Constraints, allowed_drop, chance_within, violations
from tfopt.search.inputs import describe_selection
from tfopt.search.pareto import choose_best, hypervolume_history, pareto_front

CANDIDATE_KEYS = (
    "name", "recipe", "tflite", "accuracy", "size_bytes", "gzip_bytes", "latency_ms_median", "arena_bytes", "flash_bytes",
    "on_pareto_front", "meets_constraints",
)
BASELINE_KEYS = ("accuracy", "size_bytes", "gzip_bytes", "latency_ms_median", "arena_bytes", "flash_bytes", "host")


@dataclasses.dataclass
class OptimizeResult:
    """The trials of an optimize run, their Pareto front and the best candidate.

    `candidates` holds every finished trial (a dict with the report.json keys
    plus `val_metric`, `drop` on validation, `test_drop`, `size_ratio`,
    `latency_ratio`, `violations`); `best` is a candidate name or None.
    """

    baseline: dict[str, Any]
    candidates: list[dict[str, Any]]
    best: str | None
    nearest: dict[str, Any] | None
    trials_completed: int
    trials_resumed: int
    objective: str
    metric: str
    constraints: Constraints
    output_dir: str
    level: int = 1
    target: str = "cpu"
    selection: dict[str, Any] | None = None
    hypervolume: dict[str, Any] | None = None
    failed: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    paths: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def trials(self) -> list[dict[str, Any]]:
        """Every finished trial (same as `candidates`)."""
        return self.candidates

    @property
    def pareto_front(self) -> list[dict[str, Any]]:
        """The candidates that meet the constraints and that no other such candidate beats on both the
        selection drop and the objective (Optuna's `study.best_trials` on the same two values)."""
        return [c for c in self.candidates if c["on_pareto_front"]]

    @property
    def best_candidate(self) -> dict[str, Any] | None:
        """The best candidate's dict, or None."""
        return next((c for c in self.candidates if c["name"] == self.best), None)

    def summary(self) -> str:
        """The Pareto front as a table, the baseline, and the best (or the nearest miss)."""
        top = self.metric in ("top1", "top5")
        fmt = (lambda v: f"{100 * v:6.2f}%") if top else (lambda v: f"{v:8.4g}")
        head = (f"{'candidate':<40} {self.metric:>8} {'drop ± SE':>13} {'KB':>8} {'gzip KB':>8} {'x smaller':>9} "
                f"{'x faster':>8}")
        if self.target == "micro":
            head += f" {'arena KB':>9} {'flash KB':>9}"
        b = self.baseline
        lines = [
            f"optimize level {self.level}, objective {self.objective}, target {self.target}: "
            f"{self.trials_completed} trials ({self.trials_resumed} resumed)",
            head,
            self._row("float32 baseline", b, fmt, b),
        ]
        for c in sorted(self.pareto_front, key=lambda c: c["gzip_bytes"]):
            mark = " *" if c["name"] == self.best else ("  " if c["meets_constraints"] else " !")
            lines.append(self._row(c["name"] + mark, c, fmt, b))
        if self.best:
            c = self.best_candidate
            lines.append(
                f"best: {self.best} ({b['gzip_bytes'] / c['gzip_bytes']:.1f}x smaller gzip, "
                f"{self._drop_text(c)} on test)"
            )
        else:
            near = self.nearest or {}
            lines.append(
                "no candidate meets the constraints"
                + (f"; nearest: {near.get('name')} violates {near.get('violated')}" if near else "")
            )
        for row in self.failed:
            lines.append(f"trial {row['number']} failed: {row['error']}")
        where = describe_selection(self.selection) if self.selection else "selection on validation data"
        lines.append(f"(* best, ! violates a constraint; {where}; drops in the table on the reporting data, "
                     f"with their paired standard errors; constraints decided at confidence {self.constraints.confidence:g})")
        return "\n".join(lines)

    def _drop_text(self, c: dict[str, Any]) -> str:
        se = c.get("test_drop_se")
        if self.metric in ("top1", "top5"):
            return f"{100 * c['test_drop']:+.2f} pt" + (f" ± {100 * se:.2f}" if se is not None else "")
        return f"{c['test_drop']:+.4g} {self.metric}" + (f" ± {se:.2g}" if se is not None else "")

    def _row(self, name, c, fmt, b) -> str:
        drop, se = c.get("test_drop", 0.0), c.get("test_drop_se")
        if self.metric in ("top1", "top5"):
            drop_text = f"{100 * drop:+.2f}" + (f" ± {100 * se:.2f}" if se is not None else "")
        else:
            drop_text = f"{drop:+.3g}" + (f" ± {se:.2g}" if se is not None else "")
        ratio = c.get("latency_ratio") or 1.0
        line = (
            f"{name[:40]:<40} {fmt(c['accuracy']):>8} {drop_text:>13} {c['size_bytes'] / 1024:8.1f} "
            f"{c['gzip_bytes'] / 1024:8.1f} {b['gzip_bytes'] / c['gzip_bytes']:8.1f}x {1.0 / ratio:7.2f}x"
        )
        if self.target == "micro":
            arena, flash = c.get("arena_bytes"), c.get("flash_bytes")
            line += f" {arena / 1024 if arena else float('nan'):9.1f} {flash / 1024 if flash else float('nan'):9.1f}"
        return line

    def to_dict(self) -> dict[str, Any]:
        """report.json: baseline, candidates, best, trials_completed, trials_resumed (+ context)."""
        return {
            "baseline": {k: self.baseline.get(k) for k in BASELINE_KEYS} | {"latency_ratio": 1.0},
            "candidates": [{k: c.get(k) for k in CANDIDATE_KEYS} | _extras(c) for c in self.candidates],
            "best": self.best,
            "trials_completed": self.trials_completed,
            "trials_resumed": self.trials_resumed,
            "nearest": self.nearest,
            "objective": self.objective,
            "metric": self.metric,
            "level": self.level,
            "target": self.target,
            "constraints": self.constraints.to_dict(),
            "selection": dict(self.selection or {}) | (
                {"description": describe_selection(self.selection)} if self.selection else {}
            ),
            "hypervolume": self.hypervolume,
            "failed_trials": self.failed,
        }

    def plot(self, path: str | os.PathLike | None = None):
        """Accuracy drop (validation) against the objective: every trial, the front highlighted, the bounds drawn.

        Returns the matplotlib Figure; writes it to `path` when given.
        """
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        top = self.metric in ("top1", "top5")
        scale = 100.0 if top else 1.0
        key, label = {
            "size": ("gzip_bytes", "gzip size (KB)"),
            "latency": ("latency_ratio", "latency / float32 latency"),
            "arena": ("arena_bytes", "TFLite Micro arena (KB)"),
            "flash": ("flash_bytes", "flash on the device, compressed (KB)"),
        }[self.objective]
        div = 1024.0 if key.endswith("bytes") else 1.0
        fig, ax = plt.subplots(figsize=(7, 4.5))
        xs = [c.get(key) / div if c.get(key) is not None else None for c in self.candidates]
        for c, x in zip(self.candidates, xs):
            if x is None:
                continue
            style = dict(color="tab:red", s=60, zorder=3) if c["on_pareto_front"] else dict(color="0.6", s=25)
            ax.scatter(x, scale * c["drop"], **style)
        front = sorted((x, scale * c["drop"]) for c, x in zip(self.candidates, xs) if c["on_pareto_front"] and x is not None)
        if front:
            ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="tab:red", lw=1, label="Pareto front")
        base_x = self.baseline.get(key)
        if base_x is not None:
            ax.scatter(base_x / div, 0.0, marker="*", s=150, color="black", label="float32 baseline", zorder=4)
        bound = self.constraints.max_accuracy_drop if top else self.constraints.max_metric_drop
        if bound is not None:
            ax.axhline(bound, color="tab:blue", ls="--", lw=1, label="allowed drop")
        limit = {"arena": self.constraints.max_arena_kb, "flash": self.constraints.max_flash_kb}.get(self.objective)
        if limit is not None:
            ax.axvline(limit, color="tab:green", ls="--", lw=1, label=f"{self.objective} bound")
        for c, x in zip(self.candidates, xs):  # every point of the front, by name (report.md lists the same)
            if c["on_pareto_front"] and x is not None:
                label = c["name"] + (" (best)" if c["name"] == self.best else "")
                ax.annotate(label, (x, scale * c["drop"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("selection drop (points)" if top else f"selection {self.metric} increase")
        ax.set_title(f"tfopt optimize, level {self.level}: {len(self.candidates)} trials")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        if path is not None:
            fig.savefig(os.fspath(path), dpi=110)
        return fig


def _hosts(result: OptimizeResult) -> str:
    """Where the latencies were measured: one machine named, or how many (each candidate names its own)."""
    hosts = sorted({c["host"] for c in result.candidates if c.get("host")})
    if len(hosts) == 1:
        return f"host: {hosts[0]}"
    return f"on {len(hosts)} machines, named per candidate in report.json" if hosts else "host not recorded"


def _extras(c: dict[str, Any]) -> dict[str, Any]:
    keys = ("val_metric", "drop", "drop_se", "test_drop", "test_drop_se", "chance_within_bound", "n_selection", "n_reporting",
            "output_error", "size_ratio", "latency_ratio", "violations", "keras", "c_array", "host")
    return {k: c.get(k) for k in keys}


OBJECTIVE_VALUES = {"size": "size_ratio", "latency": "latency_ratio", "arena": "arena_bytes", "flash": "flash_bytes"}  # what Optuna minimizes


def front_point(c: dict[str, Any], objective: str) -> tuple[float, float]:
    """The two values Optuna stores for a trial, both minimized: the selection drop and the objective."""
    value = c.get(OBJECTIVE_VALUES[objective])
    return float(c["drop"]), float(value) if value is not None else float("inf")


def build_result(trials: list[dict[str, Any]], baseline: dict[str, Any], *, constraints: Constraints, **meta) -> OptimizeResult:
    """Pareto front, feasibility and the best from finished trial rows (pure: no files touched).

    The front is Optuna's rule on the values the study stores: among the
    candidates that meet the constraints, those no other one beats on both
    the selection drop and the objective. When none meets them, the front of
    all candidates is shown instead (each marked as violating).
    """
    objective = meta["objective"]
    key = {"size": "gzip_bytes", "latency": "latency_ratio", "arena": "arena_bytes", "flash": "flash_bytes"}[objective]
    limit = allowed_drop(constraints)
    rows = []
    for c in trials:
        broken = violations(c, constraints)
        chance = chance_within(c["drop"], c.get("drop_se"), limit) if limit is not None else None
        rows.append({**c, "meets_constraints": not broken, "violations": broken, "chance_within_bound": chance})
    pool = [i for i, c in enumerate(rows) if c["meets_constraints"]] or list(range(len(rows)))
    front = {pool[j] for j in pareto_front([front_point(rows[i], objective) for i in pool])}
    for i, c in enumerate(rows):
        c["on_pareto_front"] = i in front
    scored = [{**c, "_key": c[key] if c.get(key) is not None else float("inf")} for c in rows]
    best, nearest = choose_best(scored, constraints, objective_key="_key")
    meta.setdefault("hypervolume", _hypervolume(rows, baseline, objective, limit))
    near = None
    if nearest is not None:
        near = {"name": rows[nearest]["name"], "violated": rows[nearest]["violations"]}
    return OptimizeResult(
        baseline=baseline, candidates=rows, best=rows[best]["name"] if best is not None else None, nearest=near,
        constraints=constraints, **meta,
    )


def _hypervolume(rows: list[dict[str, Any]], baseline: dict[str, Any], objective: str, limit: float | None) -> dict[str, Any]:
    """How the search progressed: the hypervolume of the feasible (drop, objective) points after each trial.

    The reference point is the allowed drop (or 1 point, or 0.01 of the metric,
    past the worst drop seen when unbounded) and the float32 baseline's
    objective (ratio 1, or its arena): only candidates that beat the baseline
    and meet the constraints add to it.
    """
    ordered = sorted(rows, key=lambda c: c.get("number", 0))
    if limit is None:
        limit = max([c["drop"] for c in ordered] + [0.0]) + 0.01
    if objective in ("arena", "flash"):
        field = f"{objective}_bytes"
        base = baseline.get(field)
        values = [c[field] for c in ordered if c.get(field) is not None]
        ceiling = float(base) if base else (1.1 * max(values) if values else 1.0)
    else:
        ceiling = 1.0
    reference = (float(limit), ceiling)
    points = [front_point(c, objective) if c["meets_constraints"] else None for c in ordered]
    history = hypervolume_history(points, reference)
    return {
        "reference": list(reference),
        "history": [{"trial": c.get("number", i), "value": v} for i, (c, v) in enumerate(zip(ordered, history))],
    }


def plot_hypervolume(result: OptimizeResult, path: str | os.PathLike | None = None):
    """The hypervolume after each trial (report.json's `hypervolume.history`); returns the matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    history = (result.hypervolume or {}).get("history") or []
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.step(range(1, len(history) + 1), [h["value"] for h in history], where="post", color="tab:blue")
    ax.set_xlabel("trials finished")
    ax.set_ylabel("hypervolume (drop x objective)")
    ax.set_title("how the search progressed")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    if path is not None:
        fig.savefig(os.fspath(path), dpi=110)
    return fig


def write_report(result: OptimizeResult) -> dict[str, str]:
    """Copies the Pareto candidates' artefacts to DIR/pareto/ and writes report.json, report.md, pareto.png."""
    out = result.output_dir
    folder = os.path.join(out, "pareto")
    os.makedirs(folder, exist_ok=True)
    for c in result.candidates:
        paths = c.get("paths") or {}
        c["tflite"] = paths.get("tflite")
        c["keras"] = paths.get("keras")
        if not c["on_pareto_front"]:
            continue
        for kind in ("tflite", "keras"):
            if paths.get(kind) and os.path.exists(paths[kind]):
                c[kind] = _link(paths[kind], os.path.join(folder, f"{c['name']}.{kind}"))
        if result.target == "micro" and c["tflite"]:
            c["c_array"] = _c_array(c["tflite"], folder, c["name"])
    import matplotlib.pyplot as plt

    fig = result.plot(os.path.join(out, "pareto.png"))
    plt.close(fig)
    plt.close(plot_hypervolume(result, os.path.join(out, "hypervolume.png")))
    paths = {
        "report.json": write_json(os.path.join(out, "report.json"), result.to_dict()),
        "report.md": atomic_write(os.path.join(out, "report.md"), _markdown(result).encode()),
        "pareto.png": os.path.join(out, "pareto.png"),
        "hypervolume.png": os.path.join(out, "hypervolume.png"),
    }
    result.paths.update(paths)
    return paths


def _link(source: str, target: str) -> str:
    """`target` names the same file as `source`: a hard link (no second copy on disk), else a copy."""
    tmp = f"{target}.tmp-{os.getpid()}"
    try:
        os.link(source, tmp)
    except OSError:  # another file system, or links not allowed: a copy
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)  # atomic, and a re-run's report replaces the old entry
    return target


def _c_array(tflite_path: str, folder: str, name: str) -> str | None:
    import re

    from tfopt.export.micro import export_micro

    ident = re.sub(r"[^A-Za-z0-9_]", "_", name)
    if ident[0].isdigit():
        ident = "m_" + ident
    try:
        result = export_micro(tflite_path, os.path.join(folder, name + "_micro"), name=ident)
    except Exception:  # noqa: BLE001 - the report says the C array is missing
        return None
    return next((f for f in result.files if f.endswith(".cc")), None)


def _markdown(result: OptimizeResult) -> str:
    lines = [
        f"# tfopt optimize report (level {result.level}, objective {result.objective}, target {result.target})",
        "",
        f"Metric `{result.metric}`; {describe_selection(result.selection) if result.selection else 'selection on validation data'}. "
        f"Every drop is given with its paired standard error; constraints are decided at confidence "
        f"{result.constraints.confidence:g}. Every .tflite ran on LiteRT (latency: XNNPACK, 1 thread, ratio to the float32 baseline timed in the same trial; {_hosts(result)}).",
        f"Constraints: {', '.join(f'{k}={v:g}' for k, v in result.constraints.to_dict().items() if v is not None) or 'none'}.",
        f"Trials completed: {result.trials_completed} ({result.trials_resumed} resumed from an earlier run).",
        "",
        "```",
        result.summary(),
        "```",
        "",
        "![Pareto front](pareto.png)",
        "",
        "![Hypervolume after each trial](hypervolume.png)",
        "",
        "The study opens in Optuna's dashboard: `optuna-dashboard study.journal` (the two values are named "
        "`drop` and the objective).",
        "",
        "## Recipes on the Pareto front (replay with `tfopt.apply`)",
        "",
    ]
    for c in result.pareto_front:
        steps = " -> ".join(s["technique"] + (f"({s.get('mode', '')})" if s["technique"] == "ptq" else "") for s in c["recipe"])
        lines.append(f"- `{c['name']}`: {steps}")
    return "\n".join(lines) + "\n"
