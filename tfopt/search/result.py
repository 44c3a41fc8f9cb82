"""What optimize returns and writes: `OptimizeResult`, report.json, report.md and pareto.png."""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Any

from tfopt._io import atomic_write, write_json
from tfopt.search.constraints import Constraints, violations
from tfopt.search.pareto import choose_best, pareto_front

CANDIDATE_KEYS = (
    "name", "recipe", "tflite", "accuracy", "size_bytes", "gzip_bytes", "latency_ms_median", "arena_bytes",
    "on_pareto_front", "meets_constraints",
)
BASELINE_KEYS = ("accuracy", "size_bytes", "gzip_bytes", "latency_ms_median", "arena_bytes", "host")


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
    paths: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def trials(self) -> list[dict[str, Any]]:
        """Every finished trial (same as `candidates`)."""
        return self.candidates

    @property
    def pareto_front(self) -> list[dict[str, Any]]:
        """The candidates no other candidate beats on both validation drop and objective."""
        return [c for c in self.candidates if c["on_pareto_front"]]

    @property
    def best_candidate(self) -> dict[str, Any] | None:
        """The best candidate's dict, or None."""
        return next((c for c in self.candidates if c["name"] == self.best), None)

    def summary(self) -> str:
        """The Pareto front as a table, the baseline, and the best (or the nearest miss)."""
        top = self.metric in ("top1", "top5")
        fmt = (lambda v: f"{100 * v:6.2f}%") if top else (lambda v: f"{v:8.4g}")
        head = f"{'candidate':<40} {self.metric:>8} {'drop':>7} {'KB':>8} {'gzip KB':>8} {'x gzip':>7} {'latency':>8}"
        if self.target == "micro":
            head += f" {'arena KB':>9}"
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
        lines.append("(* best, ! violates a constraint; drop measured on the test split, selection on validation)")
        return "\n".join(lines)

    def _drop_text(self, c: dict[str, Any]) -> str:
        if self.metric in ("top1", "top5"):
            return f"{100 * c['test_drop']:+.2f} pt"
        return f"{c['test_drop']:+.4g} {self.metric}"

    def _row(self, name, c, fmt, b) -> str:
        drop = c.get("test_drop", 0.0)
        drop_text = f"{100 * drop:+6.2f}" if self.metric in ("top1", "top5") else f"{drop:+7.3g}"
        line = (
            f"{name[:40]:<40} {fmt(c['accuracy']):>8} {drop_text:>7} {c['size_bytes'] / 1024:8.1f} "
            f"{c['gzip_bytes'] / 1024:8.1f} {b['gzip_bytes'] / c['gzip_bytes']:7.1f} {c.get('latency_ratio', 1.0):7.2f}x"
        )
        if self.target == "micro":
            arena = c.get("arena_bytes")
            line += f" {arena / 1024 if arena else float('nan'):9.1f}"
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
        limit = {"size": None, "latency": None, "arena": self.constraints.max_arena_kb}[self.objective]
        if limit is not None:
            ax.axvline(limit, color="tab:green", ls="--", lw=1, label="arena bound")
        if self.best:
            c = self.best_candidate
            ax.annotate(c["name"], (c[key] / div, scale * c["drop"]), fontsize=8, xytext=(5, 5), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("validation drop (points)" if top else f"validation {self.metric} increase")
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
    keys = ("val_metric", "drop", "test_drop", "output_error", "size_ratio", "latency_ratio", "violations", "keras", "c_array",
            "host")
    return {k: c.get(k) for k in keys}


def front_point(c: dict[str, Any], target: str) -> tuple[float, ...]:
    """Where a candidate sits for the Pareto front, all minimized: validation drop, output error against
    the float32 model (what a small validation set cannot resolve), gzip size, latency ratio (and arena
    for micro). The front keeps every trade-off, whatever the objective that picks `best`."""
    point = [c["drop"], float(c.get("output_error") or 0.0), float(c["gzip_bytes"]), float(c.get("latency_ratio") or 1.0)]
    if target == "micro":
        point.append(float(c["arena_bytes"]) if c.get("arena_bytes") is not None else float("inf"))
    return tuple(point)


def build_result(trials: list[dict[str, Any]], baseline: dict[str, Any], *, constraints: Constraints, **meta) -> OptimizeResult:
    """Pareto front, feasibility and the best from finished trial rows (pure: no files touched)."""
    objective = meta["objective"]
    key = {"size": "gzip_bytes", "latency": "latency_ratio", "arena": "arena_bytes"}[objective]
    front = set(pareto_front([front_point(c, meta.get("target", "cpu")) for c in trials]))
    rows = []
    for i, c in enumerate(trials):
        broken = violations(c, constraints)
        rows.append({**c, "on_pareto_front": i in front, "meets_constraints": not broken, "violations": broken})
    scored = [{**c, "_key": c[key] if c.get(key) is not None else float("inf")} for c in rows]
    best, nearest = choose_best(scored, constraints, objective_key="_key")
    near = None
    if nearest is not None:
        near = {"name": rows[nearest]["name"], "violated": rows[nearest]["violations"]}
    return OptimizeResult(
        baseline=baseline, candidates=rows, best=rows[best]["name"] if best is not None else None, nearest=near,
        constraints=constraints, **meta,
    )


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
                target = os.path.join(folder, f"{c['name']}.{kind}")
                shutil.copyfile(paths[kind], target)
                c[kind] = target
        if result.target == "micro" and c["tflite"]:
            c["c_array"] = _c_array(c["tflite"], folder, c["name"])
    import matplotlib.pyplot as plt

    fig = result.plot(os.path.join(out, "pareto.png"))
    plt.close(fig)
    paths = {
        "report.json": write_json(os.path.join(out, "report.json"), result.to_dict()),
        "report.md": atomic_write(os.path.join(out, "report.md"), _markdown(result).encode()),
        "pareto.png": os.path.join(out, "pareto.png"),
    }
    result.paths.update(paths)
    return paths


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
        f"Metric `{result.metric}`; selection on a validation split, numbers below on the test split, every .tflite "
        f"run on LiteRT (latency: XNNPACK, 1 thread, ratio to the float32 baseline timed in the same trial; {_hosts(result)}).",
        f"Constraints: {', '.join(f'{k}={v:g}' for k, v in result.constraints.to_dict().items() if v is not None) or 'none'}.",
        f"Trials completed: {result.trials_completed} ({result.trials_resumed} resumed from an earlier run).",
        "",
        "```",
        result.summary(),
        "```",
        "",
        "![Pareto front](pareto.png)",
        "",
        "## Recipes on the Pareto front (replay with `tfopt.apply`)",
        "",
    ]
    for c in result.pareto_front:
        steps = " -> ".join(s["technique"] + (f"({s.get('mode', '')})" if s["technique"] == "ptq" else "") for s in c["recipe"])
        lines.append(f"- `{c['name']}`: {steps}")
    return "\n".join(lines) + "\n"
