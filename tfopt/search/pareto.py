"""The Pareto front and the choice of the best candidate: pure functions of measured numbers."""

from __future__ import annotations

from typing import Any, Sequence

from tfopt.search.constraints import Constraints, relative_violation, violations


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """True when `a` is no worse than `b` on every (minimized) objective and better on one.

    >>> dominates((0.0, 1.0), (0.0, 2.0)), dominates((0.0, 2.0), (1.0, 1.0))
    (True, False)
    """
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the points no other point dominates (all objectives minimized), in input order.

    Exact duplicates are all kept (neither dominates the other).

    >>> pareto_front([(0.0, 3.0), (0.01, 1.0), (0.02, 2.0), (0.0, 3.0)])
    [0, 1, 3]
    """
    return [i for i, p in enumerate(points) if not any(dominates(q, p) for j, q in enumerate(points) if j != i)]


def choose_best(
    candidates: Sequence[dict[str, Any]], constraints: Constraints, *, objective_key: str
) -> tuple[int | None, int | None]:
    """Picks the best candidate: the feasible one with the smallest objective, ties to the smaller drop.

    Returns `(best, nearest)`: `best` is an index or None when no candidate meets
    the constraints; `nearest` is then the index of the candidate closest to
    feasible (smallest relative violation; ties to the smaller objective).

    >>> rows = [{"drop": 0.0, "size": 10}, {"drop": 0.005, "size": 4}, {"drop": 0.03, "size": 1}]
    >>> choose_best(rows, Constraints(max_accuracy_drop=1.0), objective_key="size")
    (1, None)
    """
    feasible = [i for i, c in enumerate(candidates) if not violations(c, constraints)]
    if feasible:
        best = min(feasible, key=lambda i: (candidates[i][objective_key], candidates[i]["drop"], i))
        return best, None
    if not candidates:
        return None, None
    nearest = min(
        range(len(candidates)),
        key=lambda i: (relative_violation(candidates[i], constraints), candidates[i][objective_key], i),
    )
    return None, nearest


def hypervolume_2d(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """The area dominated by `points` (both coordinates minimized) inside the box up to `reference`.

    Points at or beyond the reference in either coordinate add nothing.

    >>> hypervolume_2d([(0.0, 2.0), (1.0, 1.0)], (2.0, 3.0))
    3.0
    """
    inside = sorted((float(x), float(y)) for x, y in points if x < reference[0] and y < reference[1])
    area, ceiling = 0.0, float(reference[1])
    for x, y in inside:  # sweep along the first coordinate; each point adds the strip below the lowest y so far
        if y < ceiling:
            area += (reference[0] - x) * (ceiling - y)
            ceiling = y
    return area


def hypervolume_history(points: Sequence[Sequence[float] | None], reference: Sequence[float]) -> list[float]:
    """The hypervolume after each trial, in trial order; `None` marks a trial that counts for nothing
    (failed, or outside the constraints).

    >>> hypervolume_history([(1.0, 1.0), None, (0.0, 2.0)], (2.0, 3.0))
    [2.0, 2.0, 3.0]
    """
    seen: list[Sequence[float]] = []
    history = []
    for point in points:
        if point is not None:
            seen.append(point)
        history.append(hypervolume_2d(seen, reference))
    return history
