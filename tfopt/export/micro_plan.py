"""tfopt's own TFLite Micro memory plan: an operator order and one arena offset per tensor.

TFLite Micro runs operators in flatbuffer order and places activations with a
greedy planner. Its allocator also reads an offline plan from the model's
metadata (`OfflineMemoryAllocation`: one arena-head offset per tensor, TFLite
Micro's docs/memory_management.md). This module chooses both:

1. an operator order: any topological order; for graphs small enough, the order
   whose peak of live activation bytes is smallest (a best-first search over
   the sets of executed operators, which is exact), else a greedy order;
2. tensor offsets: best fit, largest tensor first, then other placement
   sequences until the packing reaches the lower bound, using TFLite Micro's own
   lifetime rules (a tensor lives from the step that writes it to the last step
   that reads it; graph inputs from step 0, graph outputs to the end; sizes
   rounded up to 16 bytes).

`lower_bound_bytes` is the largest sum of live tensors at any step of the chosen
order: no offsets can do better for that order. `head_bytes` is what the offsets
reach (equal to the bound when best fit packs perfectly).

Everything here but `plan_tflite` is pure Python on lists; `plan_tflite` reads
and writes the flatbuffer through `tfopt.analyze.flatbuffer`.

>>> from tfopt.export.micro_plan import Graph, plan_graph
>>> # x -> A (big) -> a, x -> B (big) -> b, a + b -> out; the converter's order holds A and B together
>>> g = Graph(ops=[([0], [1]), ([0], [2]), ([1], [3]), ([2], [4]), ([3, 4], [5])],
...           sizes=[64, 256, 256, 16, 16, 16], inputs=[0], outputs=[5])
>>> p = plan_graph(g)
>>> p.order, p.original_lower_bound_bytes, p.lower_bound_bytes, p.head_bytes
([0, 2, 1, 3, 4], 576, 336, 336)
"""

from __future__ import annotations

import dataclasses
import heapq
import os
import tempfile
from collections.abc import Sequence
from typing import Any

ALIGNMENT = 16  # TFLite Micro's MicroArenaBufferAlignment
MAX_SEARCH_STATES = 50_000


@dataclasses.dataclass(frozen=True)
class Graph:
    """A single-subgraph model for the planner: `ops[k] = (input tensors, output tensors)`, arena `sizes` per tensor
    (0 for constants), graph `inputs` and `outputs`."""

    ops: Sequence[tuple[Sequence[int], Sequence[int]]]
    sizes: Sequence[int]
    inputs: Sequence[int]
    outputs: Sequence[int]


@dataclasses.dataclass(frozen=True)
class MicroPlan:
    """A chosen operator order and offsets, with their bounds (bytes)."""

    order: list[int]
    offsets: list[int]  # per tensor; -1 for tensors TFLite Micro does not place
    lower_bound_bytes: int  # largest sum of live tensors at any step of `order`
    head_bytes: int  # arena head the offsets need (max offset + size)
    original_lower_bound_bytes: int  # the same bound for the flatbuffer's own order
    searched: str  # "exact" or "greedy"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)


def aligned(size: int) -> int:
    """`size` rounded up to TFLite Micro's 16-byte buffer alignment.

    >>> aligned(1), aligned(16), aligned(17)
    (16, 16, 32)
    """
    return -(-int(size) // ALIGNMENT) * ALIGNMENT


def lifetimes(graph: Graph, order: Sequence[int]) -> tuple[list[int], list[int]]:
    """First and last step of each tensor under TFLite Micro's rules (step k+1 runs `order[k]`; -1 = never)."""
    n = len(graph.sizes)
    first, last = [-1] * n, [-1] * n
    for t in graph.inputs:
        first[t], last[t] = 0, 0
    for step, k in enumerate(order, start=1):
        ins, outs = graph.ops[k]
        for t in outs:
            if first[t] < 0:
                first[t] = step
        for t in list(ins) + list(outs):
            last[t] = step
    for t in graph.outputs:
        if first[t] < 0:
            first[t] = len(order)
        last[t] = len(order)
    return first, last


def peak_bytes(graph: Graph, order: Sequence[int]) -> int:
    """The largest sum of live (aligned) tensor bytes at any step of `order`: a lower bound on the arena head."""
    first, last = lifetimes(graph, order)
    steps = [0] * (len(order) + 1)
    for t, size in enumerate(graph.sizes):
        if size and first[t] >= 0:
            for s in range(first[t], last[t] + 1):
                steps[s] += aligned(size)
    return max(steps) if steps else 0


def _consumers(graph: Graph) -> tuple[list[int], dict[int, list[int]]]:
    producer_mask = [0] * len(graph.ops)
    producers: dict[int, int] = {}
    for k, (_, outs) in enumerate(graph.ops):
        for t in outs:
            producers[t] = k
    readers: dict[int, list[int]] = {}
    for k, (ins, _) in enumerate(graph.ops):
        for t in ins:
            readers.setdefault(t, []).append(k)
            if t in producers and producers[t] != k:
                producer_mask[k] |= 1 << producers[t]
    return producer_mask, readers


def _live_bytes(graph: Graph, done: int, readers: dict[int, list[int]], produced_by: dict[int, int]) -> int:
    """Bytes of tensors alive between steps once the ops in bitmask `done` ran."""
    total = 0
    outputs = set(graph.outputs)
    for t, size in enumerate(graph.sizes):
        if not size:
            continue
        k = produced_by.get(t)
        available = t in graph.inputs if k is None else bool(done >> k & 1)
        if not available:
            continue
        if t in outputs or any(not done >> r & 1 for r in readers.get(t, ())):
            total += aligned(size)
    return total


def search_order(graph: Graph, *, max_states: int = MAX_SEARCH_STATES) -> tuple[list[int], str]:
    """The topological order with the smallest peak of live bytes (exact best-first search), or a greedy one.

    The search state is the set of executed operators; the cost of running op
    `k` next is the live bytes plus `k`'s outputs, and a path costs its worst
    step (a bottleneck path, found in order of cost, so the first complete
    path is optimal). Past `max_states` states it returns the greedy order
    (always run the ready op whose step is cheapest). Ties keep the
    flatbuffer's order.
    """
    n = len(graph.ops)
    needs, readers = _consumers(graph)
    produced_by = {t: k for k, (_, outs) in enumerate(graph.ops) for t in outs}
    out_bytes = [sum(aligned(graph.sizes[t]) for t in outs) for _, outs in graph.ops]
    full = (1 << n) - 1
    live_cache: dict[int, int] = {}

    def live(done: int) -> int:
        if done not in live_cache:
            live_cache[done] = _live_bytes(graph, done, readers, produced_by)
        return live_cache[done]

    def ready(done: int) -> list[int]:
        return [k for k in range(n) if not done >> k & 1 and needs[k] & done == needs[k]]

    start_cost = live(0)
    heap: list[tuple[int, tuple[int, ...], int]] = [(start_cost, (), 0)]
    best: dict[int, int] = {0: start_cost}
    visited = 0
    while heap and visited < max_states:
        cost, path, done = heapq.heappop(heap)
        if best.get(done, 1 << 62) < cost:
            continue
        if done == full:
            return list(path), "exact"
        visited += 1
        base = live(done)
        for k in ready(done):
            step = max(cost, base + out_bytes[k])
            nxt = done | 1 << k
            if step < best.get(nxt, 1 << 62):
                best[nxt] = step
                heapq.heappush(heap, (step, path + (k,), nxt))
    return _greedy_order(graph, needs, live, out_bytes), "greedy"


def _greedy_order(graph: Graph, needs: list[int], live, out_bytes: list[int]) -> list[int]:
    n, done, order = len(graph.ops), 0, []
    for _ in range(n):
        options = [k for k in range(n) if not done >> k & 1 and needs[k] & done == needs[k]]
        k = min(options, key=lambda k: (live(done) + out_bytes[k], live(done | 1 << k), k))
        order.append(k)
        done |= 1 << k
    return order


def _place(sizes: list[int], first: list[int], last: list[int], sequence: Sequence[int], *, best_fit: bool):
    """Places tensors in `sequence`, each at the lowest (or best-fitting) free offset; returns (offsets, head)."""
    offsets = [-1] * len(sizes)
    placed: list[int] = []
    head = 0
    for t in sequence:
        size = sizes[t]
        busy = sorted(
            (offsets[u], offsets[u] + sizes[u]) for u in placed if first[u] <= last[t] and first[t] <= last[u]
        )
        chosen, best_gap, cursor = None, None, 0
        for lo, hi in busy:
            gap = lo - cursor
            if gap >= size and (best_gap is None or (best_fit and gap < best_gap)):
                chosen, best_gap = cursor, gap
                if not best_fit:
                    break
            cursor = max(cursor, hi)
        offsets[t] = cursor if chosen is None else chosen
        placed.append(t)
        head = max(head, offsets[t] + size)
    return offsets, head


def assign_offsets(graph: Graph, order: Sequence[int], *, attempts: int = 400, seed: int = 0) -> tuple[list[int], int]:
    """Arena offsets for the tensors TFLite Micro places in `order`; returns (offsets per tensor, head bytes).

    Best fit, largest tensor first, then other placement sequences (by first
    use, by lifetime, random swaps of the best so far), each tensor at the
    lowest free offset, stopping at the lower bound. Placing tensors at their
    lowest free offset in the right sequence reaches any optimal packing, so
    the search only has to find that sequence.
    """
    import random

    first, last = lifetimes(graph, order)
    sizes = [aligned(s) if s and first[t] >= 0 else 0 for t, s in enumerate(graph.sizes)]
    todo = [t for t, size in enumerate(sizes) if size]
    bound = peak_bytes(graph, order)
    keys = [
        lambda t: (-sizes[t], first[t], t),
        lambda t: (first[t], -sizes[t], t),
        lambda t: (-(last[t] - first[t]), -sizes[t], t),
        lambda t: (-sizes[t] * (last[t] - first[t] + 1), t),
    ]
    best = _place(sizes, first, last, sorted(todo, key=keys[0]), best_fit=True)
    best_sequence = sorted(todo, key=keys[0])
    for key in keys:
        for best_fit in (False, True):
            sequence = sorted(todo, key=key)
            found = _place(sizes, first, last, sequence, best_fit=best_fit)
            if found[1] < best[1]:
                best, best_sequence = found, sequence
    rng = random.Random(seed)
    for _ in range(attempts if len(todo) > 1 else 0):
        if best[1] <= bound:
            break
        sequence = list(best_sequence)
        i, j = rng.randrange(len(sequence)), rng.randrange(len(sequence))
        sequence.insert(j, sequence.pop(i))
        found = _place(sizes, first, last, sequence, best_fit=False)
        if found[1] <= best[1]:
            best, best_sequence = found, sequence
    offsets = [o if sizes[t] else -1 for t, o in enumerate(best[0])]
    return offsets, best[1]


def plan_graph(graph: Graph, *, max_states: int = MAX_SEARCH_STATES) -> MicroPlan:
    """An operator order and offsets for `graph` (see the module docstring)."""
    original = list(range(len(graph.ops)))
    order, how = search_order(graph, max_states=max_states)
    if peak_bytes(graph, order) >= peak_bytes(graph, original):
        order = original  # no gain: keep the converter's order
    offsets, head = assign_offsets(graph, order)
    return MicroPlan(
        order=list(order),
        offsets=offsets,
        lower_bound_bytes=peak_bytes(graph, order),
        head_bytes=head,
        original_lower_bound_bytes=peak_bytes(graph, original),
        searched=how,
    )


def plan_tflite(tflite: Any) -> tuple[bytes, MicroPlan] | None:
    """Plans a .tflite for TFLite Micro; returns (the re-ordered, planned, aligned flatbuffer, the plan).

    Returns `None` when the model cannot carry an offline plan (several subgraphs,
    or dynamic shapes). The caller checks the result on TFLite Micro.
    """
    from tfopt.analyze.flatbuffer_micro import micro_graph, write_micro_plan

    facts = micro_graph(tflite)
    if facts["num_subgraphs"] != 1 or not facts["static"] or not facts["ops"]:
        return None
    graph = Graph(ops=facts["ops"], sizes=facts["sizes"], inputs=facts["inputs"], outputs=facts["outputs"])
    plan = plan_graph(graph)
    order = None if plan.order == list(range(len(graph.ops))) else plan.order
    return align_for_micro(write_micro_plan(tflite, order=order, offsets=plan.offsets)), plan


def align_for_micro(content: bytes) -> bytes:
    """Re-packs a flatbuffer with TFLite Micro's aligner (buffers on their schema alignment, as its writer does)."""
    from tflite_micro.tensorflow.lite.micro.tools import tflite_flatbuffer_align_wrapper

    with tempfile.TemporaryDirectory(prefix="tfopt-align-") as tmp:
        src, dst = os.path.join(tmp, "in.tflite"), os.path.join(tmp, "out.tflite")
        with open(src, "wb") as handle:
            handle.write(content)
        tflite_flatbuffer_align_wrapper.align_tflite_model(src, dst)
        with open(dst, "rb") as handle:
            return handle.read()
