"""tfopt's TFLite Micro memory plan: order search and offsets on small graphs, and real models on TFLite Micro."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from tfopt.export.micro_plan import (
    Graph,
    aligned,
    assign_offsets,
    lifetimes,
    peak_bytes,
    plan_graph,
    search_order,
)

# x -> A (big) -> a, x -> B (big) -> b, a + b -> out, listed in an order that holds A and B together
BRANCHES = Graph(
    ops=[([0], [1]), ([0], [2]), ([1], [3]), ([2], [4]), ([3, 4], [5])],
    sizes=[64, 256, 256, 16, 16, 16],
    inputs=[0],
    outputs=[5],
)


def test_lifetimes_follow_tflite_micro_rules():
    first, last = lifetimes(BRANCHES, [0, 1, 2, 3, 4])
    assert first == [0, 1, 2, 3, 4, 5]
    assert last == [2, 3, 4, 5, 5, 5]  # x until its last reader; the graph output to the end


def test_search_order_beats_the_listed_order():
    order, how = search_order(BRANCHES)
    assert how == "exact" and order == [0, 2, 1, 3, 4]
    assert peak_bytes(BRANCHES, order) == 336 < peak_bytes(BRANCHES, [0, 1, 2, 3, 4]) == 576


def _random_dag(rng: random.Random, num_ops: int) -> Graph:
    sizes, ops = [aligned(rng.randint(1, 400))], []
    for k in range(num_ops):
        available = list(range(len(sizes)))
        ins = rng.sample(available, min(len(available), rng.randint(1, 2)))
        ops.append((ins, [len(sizes)]))
        sizes.append(aligned(rng.randint(1, 400)))
    return Graph(ops=ops, sizes=sizes, inputs=[0], outputs=[len(sizes) - 1])


def _topological_orders(graph: Graph):
    producer = {t: k for k, (_, outs) in enumerate(graph.ops) for t in outs}
    needs = [{producer[t] for t in ins if t in producer} for ins, _ in graph.ops]

    def extend(order: list[int]):
        if len(order) == len(graph.ops):
            yield list(order)
            return
        for k in range(len(graph.ops)):
            if k not in order and needs[k] <= set(order):
                yield from extend(order + [k])

    yield from extend([])


@pytest.mark.parametrize("seed", range(6))
def test_search_order_is_exact_on_small_graphs(seed):
    graph = _random_dag(random.Random(seed), 6)
    order, how = search_order(graph)
    assert how == "exact"
    assert peak_bytes(graph, order) == min(peak_bytes(graph, o) for o in _topological_orders(graph))


@pytest.mark.parametrize("seed", range(6))
def test_offsets_never_overlap_live_tensors(seed):
    graph = _random_dag(random.Random(seed), 12)
    plan = plan_graph(graph)
    first, last = lifetimes(graph, plan.order)
    live = [t for t, o in enumerate(plan.offsets) if o >= 0]
    for a, b in itertools.combinations(live, 2):
        if first[a] <= last[b] and first[b] <= last[a]:
            end_a, end_b = plan.offsets[a] + aligned(graph.sizes[a]), plan.offsets[b] + aligned(graph.sizes[b])
            assert end_a <= plan.offsets[b] or end_b <= plan.offsets[a], (a, b)
    assert plan.head_bytes >= plan.lower_bound_bytes == peak_bytes(graph, plan.order)
    assert all(o % 16 == 0 for o in plan.offsets if o >= 0)


def test_greedy_order_past_the_state_budget():
    order, how = search_order(BRANCHES, max_states=1)
    assert how == "greedy" and sorted(order) == list(range(5))
    _, head = assign_offsets(BRANCHES, order)
    assert head >= peak_bytes(BRANCHES, order)


@pytest.fixture(scope="module")
def residual_digits():
    """A residual two-branch CNN trained on real 8x8 digits, full int8."""
    import keras

    import tfopt

    data = tfopt.load_dataset("digits")
    keras.utils.set_random_seed(0)
    layers = keras.layers
    inputs = keras.Input((8, 8, 1))
    x = layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    a = layers.Conv2D(16, 1)(layers.Conv2D(32, 3, padding="same", activation="relu")(x))
    b = layers.Conv2D(16, 1)(layers.Conv2D(32, 5, padding="same", activation="relu")(x))
    x = layers.ReLU()(layers.Add()([x, a, b]))
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(layers.MaxPooling2D()(x))
    model = keras.Model(inputs, layers.Dense(10)(layers.GlobalAveragePooling2D()(x)))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(data.x_train, data.y_train, epochs=2, verbose=0)
    tflite = tfopt.convert(model, mode="int8", calibration=data.x_train[:100], input_type="int8", output_type="int8")
    return tflite.tflite, data


def test_export_micro_plan_below_tflite_micro_on_a_branchy_model(residual_digits, tmp_path):
    from tfopt.analyze.flatbuffer_micro import micro_graph
    from tfopt.export.micro import export_micro

    tflite, data = residual_digits
    result = export_micro(tflite, tmp_path, name="res", data=data.x_test, num_samples=40)
    plan = result.plan
    assert result.ok and plan["used"] and plan["mismatched_samples"] == 0 and plan["compared_samples"] == 40
    assert plan["arena_bytes"] < plan["tflm_arena_bytes"] == result.plain_arena_bytes
    assert result.arena_bytes == plan["arena_bytes"]
    # the head TFLite Micro measured is tfopt's plan, and the plan reaches the lower bound of its order
    assert plan["head_bytes_measured"] == plan["head_bytes"] == plan["lower_bound_bytes"] < plan["tflm_head_bytes"]
    written = (tmp_path / "res.tflite").read_bytes()
    assert micro_graph(written)["has_offline_plan"] and len(written) == result.flash_bytes
    assert "OfflineMemoryAllocation" in "\n".join(result.device_build)
    assert "lower bound" in result.summary()


def test_export_micro_reorders_a_bad_operator_order(residual_digits, tmp_path):
    from tfopt.analyze.flatbuffer_micro import micro_graph, write_micro_plan
    from tfopt.export.micro import export_micro
    from tfopt.export.micro_plan import Graph as G

    tflite, data = residual_digits
    facts = micro_graph(tflite)
    graph = G(ops=facts["ops"], sizes=facts["sizes"], inputs=facts["inputs"], outputs=facts["outputs"])
    # the worst valid order: among the topological orders of a small graph, the one with the largest peak
    orders = list(_topological_orders(graph))
    worst = max(orders, key=lambda o: peak_bytes(graph, o))
    assert peak_bytes(graph, worst) > min(peak_bytes(graph, o) for o in orders)
    bad = write_micro_plan(tflite, order=worst, offsets=None)
    result = export_micro(bad, tmp_path, name="bad", data=data.x_test, num_samples=30)
    plan = result.plan
    assert plan["used"] and plan["order_changed"] and plan["mismatched_samples"] == 0
    assert plan["original_lower_bound_bytes"] > plan["lower_bound_bytes"]
    assert plan["arena_bytes"] < plan["tflm_arena_bytes"]


def test_export_micro_keeps_tflite_micro_plan_when_its_own_is_not_smaller(residual_digits, tmp_path, monkeypatch):
    from tfopt.analyze.flatbuffer_micro import micro_graph, write_micro_plan
    from tfopt.export import micro_plan
    from tfopt.export.micro import export_micro

    tflite, data = residual_digits

    def spread(content):  # every tensor in its own slot: valid, and far larger than TFLite Micro's plan
        _, plan = real(content)
        sizes = micro_graph(content)["sizes"]
        offsets = list(np.cumsum([0] + [aligned(s) for s in sizes[:-1]]))
        offsets = [int(o) if s else -1 for o, s in zip(offsets, sizes)]
        return micro_plan.align_for_micro(write_micro_plan(content, order=None, offsets=offsets)), plan

    real = micro_plan.plan_tflite
    monkeypatch.setattr(micro_plan, "plan_tflite", spread)
    result = export_micro(tflite, tmp_path, name="res", data=data.x_test, num_samples=10)
    assert not result.plan["used"] and result.plan["arena_bytes"] > result.plan["tflm_arena_bytes"]
    assert result.arena_bytes == result.plain_arena_bytes
    assert (tmp_path / "res.tflite").read_bytes() == tflite
    assert any("kept TFLite Micro's own memory plan" in note for note in result.notes)
