"""The planner: its generated source (`Plan.source`, in tracebacks through linecache, with
request-chosen names kept inside comments), and buffer ownership: an array written in place
or given back to the pool is one that nothing still to be read, and nothing returned to the
caller, shares. Schedules are built node by node where the order matters."""

import gc
import linecache
import re
import traceback

import numpy as np
import pytest
from gradserve.engine import plan_cache  # engine internals
from gradserve.engine.graph import Graph, Node, Port, Spec
from gradserve.engine.plan import INTERPRETED_RUNS, POOL_MIN_ELEMENTS, STOP_CHECK_ELEMENTS, Plan
from gradserve.engine.transforms import Program, vjp

import gradserve as gs
import gradserve.numpy as gnp

N = 64  # an N x N float64 array is large enough for the buffer pool
assert N * N >= POOL_MIN_ELEMENTS


def plan_of(inputs, nodes, outputs, constants=None):
    graph = Graph([Port(n, s) for n, s in inputs], constants or {}, nodes, outputs)
    return Plan(Program(graph))


def square(seed=0):
    return np.random.default_rng(seed).uniform(0.1, 1.0, size=(N, N))


# ---- generated source ---------------------------------------------------------------------


def test_source_names_every_op_and_node():
    x = np.linspace(0.1, 1.0, 10)
    graph = gs.trace(lambda x: gnp.sum(gnp.tanh(x) * gnp.exp(x)), x)
    plan = Plan(Program(graph))
    source = plan.source
    assert source.startswith("def run(") and source.isascii()
    for i, node in enumerate(graph.nodes):
        assert f"# {node.op}  node {i} -> " in source
    assert "stop()" in plan.checked_source and "stop()" not in source
    np.testing.assert_allclose(plan.run([x])[0], np.sum(np.tanh(x) * np.exp(x)))
    assert plan.source == source  # the same text once compiled


CODE_LINE = re.compile(
    r"(def run\((stop, )?(v\d+(, v\d+)*)?\):"
    r"|    (v\d+ = K\d+"
    r"|(v\d+|v\d+,|v\d+(, v\d+)+) = F\d+\((v\d+(, v\d+)*)?\)"
    r"|R\d+\(v\d+\)|del v\d+(, v\d+)*|return \[(v\d+(, v\d+)*)?\]|stop\(\)))"
    r"(  # [ -~]*)?"
)


@pytest.mark.parametrize(
    "evil",
    [
        "x\nimport os\nos.system('false')",
        "x\r\n    raise SystemExit",
        "nul\x00byte",
        "line\u2028separator\u2029and\x85next\x0bline\x0cfeed",
        "quote' \"\"\" ''' # \\",
        "-*- coding: latin-1 -*-",
        "\u202etrojan source",
        "y" * 250,
    ],
)
def test_request_names_stay_inside_comments(evil):
    n = 8
    name = evil[:250]
    out = "out:" + name[::-1]
    plan = plan_of(
        [(name, Spec((n,)))],
        [
            Node("exp", (name,), (name + "1",), {}),
            Node("full", (), (name + "2",), {"shape": (n,), "dtype": "float64", "value": 2.0}),
            Node("multiply", (name + "1", name + "2"), (out,), {}),
        ],
        [out],
        constants={name + "c": np.ones(3)},
    )
    for source in (plan.source, plan.checked_source):
        assert source.isascii()
        lines = source.splitlines()
        assert len(lines) == source.count("\n")  # no line break of any other kind
        for line in lines:
            assert CODE_LINE.fullmatch(line), line
    x = np.linspace(0, 1, n)
    np.testing.assert_allclose(plan.run([x])[0], 2 * np.exp(x))
    np.testing.assert_allclose(plan.run([x], should_stop=lambda: None)[0], 2 * np.exp(x))


def compiled(plan: Plan, compile_first: bool) -> Plan:
    """`plan`, with its generated functions compiled now when `compile_first` (a plan's first
    runs go through Plan._interpret otherwise)."""
    if compile_first:
        plan._straight, plan._checked  # noqa: B018  (compiled on access)
    return plan


@pytest.mark.parametrize("compile_first", [False, True], ids=["interpreted", "compiled"])
def test_a_failing_op_shows_its_generated_line_in_the_traceback(compile_first):
    graph = gs.trace(
        lambda v: gs.while_loop(lambda v: v < 10.0, lambda v: v + 1.0, v, max_iterations=3) * v,
        0.0,
    )
    for should_stop in (None, lambda: None):
        with pytest.raises(gs.LimitError) as caught:
            compiled(Plan(Program(graph)), compile_first).run([0.0], should_stop)
        text = "".join(traceback.format_exception(caught.value))
        assert "<gradserve plan " in text
        assert re.search(r"v\d+, = F\d+\(v\d+\)  # while_loop  node \d+ -> '", text), text


@pytest.mark.parametrize("compile_first", [False, True], ids=["interpreted", "compiled"])
def test_a_stop_shows_the_stop_line(compile_first):
    x = np.linspace(0, 1, 10)
    plan = compiled(Plan(Program(gs.trace(lambda x: gnp.sum(gnp.sin(x)), x))), compile_first)

    def stop():
        raise KeyboardInterrupt

    try:
        plan.run([x], should_stop=stop)
    except KeyboardInterrupt:
        text = traceback.format_exc()
    assert re.search(r"<gradserve plan [0-9a-f]{12} #\d+ checked>", text)
    assert "    stop()" in text


def test_source_comments_name_inputs_and_outputs_cut_after_40_characters():
    """The def and return lines name the inputs and outputs; a name of 40 characters is shown
    whole, a longer one cut to its first 40 with "..." after."""
    whole, cut = "a" * 40, "b" * 41
    plan = plan_of(
        [("x", Spec((3,)))],
        [Node("exp", ("x",), (whole,), {}), Node("sin", ("x",), (cut,), {})],
        [whole, cut],
    )
    lines = plan.source.splitlines()
    assert lines[0] == "def run(v0):  # 'x'"
    assert lines[-1] == f"    return [v1, v2]  # '{whole}', '{'b' * 40}'..."
    assert f"# exp  node 0 -> '{whole}'" in plan.source


def _chain_plan():
    """Six one-operand ops in a row on STOP_CHECK_ELEMENTS / 4 elements: each step reads and
    writes half of STOP_CHECK_ELEMENTS, so should_stop is due before steps 0, 2 and 4."""
    n = STOP_CHECK_ELEMENTS // 4
    ops = ["exp", "sin", "cos", "tanh", "negative", "exp"]
    names = ["x"] + [f"v{k}" for k in range(len(ops))]
    nodes = [Node(op, (a,), (b,), {}) for op, a, b in zip(ops, names, names[1:])]
    return plan_of([("x", Spec((n,)))], nodes, [names[-1]]), np.linspace(0, 1, n)


@pytest.mark.parametrize("compile_first", [False, True], ids=["interpreted", "compiled"])
def test_should_stop_is_called_once_per_stop_check_elements_of_work(compile_first):
    plan, x = _chain_plan()
    plan = compiled(plan, compile_first)
    calls = []
    out = plan.run([x], should_stop=lambda: calls.append(None))[0]
    np.testing.assert_allclose(out, np.exp(-np.tanh(np.cos(np.sin(np.exp(x))))))
    assert len(calls) == 3
    assert plan.checked_source.count("    stop()") == 3


def test_an_interpreted_stop_notes_its_line_of_the_checked_source():
    """The note of an interrupted interpreted run gives the 1-based number of the `stop()`
    line it stopped at in the checked source, and shows that line."""
    plan, x = _chain_plan()
    calls = []

    def stop():
        calls.append(None)
        if len(calls) == 2:  # before step 2
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as caught:
        plan.run([x], should_stop=stop)
    (note,) = caught.value.__notes__
    where = re.fullmatch(
        r'  File "<gradserve plan [0-9a-f]{12} #\d+ checked>", line (\d+), in run \(interpreted\)'
        r"\n    stop\(\)",
        note,
    )
    assert where, note
    lines = plan.checked_source.splitlines()
    number = int(where.group(1))
    assert lines[number - 1] == "    stop()"
    assert lines[number].startswith("    v3 = F2(v2)  # cos  node 2 ")


def test_the_checked_source_has_its_stop_calls_once_the_plain_function_is_compiled():
    plan, x = _chain_plan()
    for _ in range(INTERPRETED_RUNS + 1):  # the last run compiles the plain function
        plan.run([x])
    assert "stop()" not in plan.source
    assert plan.checked_source.count("    stop()") == 3


# ---- interpreted first, compiled once reused ------------------------------------------------


def _loop_and_pool(x):
    y = gnp.exp(x) * gnp.sin(x)  # N x N: buffers written in place and pooled
    z = gs.fori_loop(0, 3, lambda i, c: c * 0.5 + gnp.tanh(c), y)
    return gnp.sum(z * y) + gnp.sum(gnp.reshape(x, (-1,))[:5])


@pytest.mark.parametrize(
    "method",
    [
        lambda g, x: Program(g),
        lambda g, x: vjp(Program(g), (0,), seed_ones=True),
        lambda g, x: vjp(Program(g), (0,), seed_ones=True, loop_tapes=True),
    ],
    ids=["evaluate", "grad", "grad-loop-tapes"],
)
def test_the_interpreter_runs_what_the_generated_function_runs(method):
    x = square(5)
    graph = gs.trace(_loop_and_pool, x)
    plan = Plan(method(graph, x))
    assert plan.donations and any(step[4] for step in plan.steps)  # in place, and pooled
    stops = {"interpreted": [], "compiled": []}
    results = {}
    for mode, seen in stops.items():

        def should_stop(seen=seen):
            seen.append(None)

        out = []
        for checked in (None, should_stop):
            for _ in range(2):  # the second call takes buffers from the pool
                arg = x.copy()
                if mode == "interpreted":
                    run = plan._interpret([arg], checked)
                else:
                    function = plan._checked if checked else plan._straight
                    run = function(checked, arg) if checked else function(arg)
                np.testing.assert_array_equal(arg, x)  # the argument is never written into
                out.append([np.array(v, copy=True) for v in run])
        results[mode] = out
    for a, b in zip(results["interpreted"], results["compiled"]):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)
    assert stops["interpreted"] == stops["compiled"] and stops["interpreted"]
    # and both are right: the value against NumPy
    y = np.exp(x) * np.sin(x)
    z = y
    for _ in range(3):
        z = z * 0.5 + np.tanh(z)
    np.testing.assert_allclose(results["compiled"][0][0], np.sum(z * y) + np.sum(x.ravel()[:5]))


def test_a_calls_tape_budget_ends_with_the_call():
    """A budget given to one engine call is that call's: a plan run outside any call (as the
    test above runs them) records its loop tapes without one."""
    small = gs.trace(lambda x: gs.fori_loop(0, 4, lambda i, c: gnp.sin(c), x), 0.5)
    engine = gs.Engine(max_tape_bytes=256)
    np.testing.assert_allclose(engine.grad(small, 0.5), _sin_chain_derivative(0.5, 4))
    x = square(5)
    plan = Plan(vjp(Program(gs.trace(_loop_and_pool, x)), (0,), seed_ones=True, loop_tapes=True))
    value = plan.run([x])[0]  # its carries need far more than the 256 bytes above
    y = np.exp(x) * np.sin(x)
    z = y
    for _ in range(3):
        z = z * 0.5 + np.tanh(z)
    np.testing.assert_allclose(value, np.sum(z * y) + np.sum(x.ravel()[:5]))


def _sin_chain_derivative(x, n):
    derivative = 1.0
    for _ in range(n):
        derivative *= np.cos(x)
        x = np.sin(x)
    return derivative


def test_a_plan_is_compiled_once_it_has_run_a_few_times():
    x = np.linspace(0, 1, 10)
    plan = Plan(Program(gs.trace(lambda x: gnp.sum(gnp.sin(x) * x), x)))
    for _ in range(INTERPRETED_RUNS):
        np.testing.assert_allclose(plan.run([x])[0], np.sum(np.sin(x) * x))
        assert "_straight" not in plan.__dict__ and "_checked" not in plan.__dict__
    np.testing.assert_allclose(plan.run([x])[0], np.sum(np.sin(x) * x))
    assert "_straight" in plan.__dict__  # compiled by that run, used from now on
    np.testing.assert_allclose(plan.run([x], should_stop=lambda: None)[0], np.sum(np.sin(x) * x))
    assert "_checked" in plan.__dict__


def compiled_filename(plan):
    return plan._straight.__code__.co_filename


def test_linecache_entries_go_with_their_plans(monkeypatch):
    # the process's shared cache keeps plans too: here it keeps as few as the engine
    monkeypatch.setattr(plan_cache, "shared", plan_cache.PlanCache(max_plans=2))
    eng = gs.Engine(plan_cache_size=2)
    x = np.linspace(0, 1, 10)
    seen = []
    for k in range(6):
        graph = gs.trace(lambda x, k=k: gnp.sum(gnp.sin(x) * (k + 1.0)), x)
        eng.evaluate(graph, x)
        seen += [compiled_filename(p) for p in eng._plans.values()]
    seen = set(seen)
    assert len(seen) == 6
    gc.collect()
    alive = {compiled_filename(p) for p in eng._plans.values()}
    assert len(alive) == 2
    for filename in seen:
        assert (filename in linecache.cache) == (filename in alive)
    assert linecache.getline(next(iter(alive)), 1).startswith("def run(")
    del eng
    plan_cache.shared.clear()
    gc.collect()
    assert not any(filename in linecache.cache for filename in seen)


def test_setting_steps_recompiles():
    x = np.linspace(0, 1, 10)
    plan = Plan(Program(gs.trace(lambda x: gnp.sum(gnp.sin(x)), x)))
    plan.run([x])
    calls = []

    def counted(fn):
        def step(*args):
            calls.append(fn)
            return fn(*args)

        return step

    plan.steps = [(counted(s[0]), *s[1:]) for s in plan.steps]
    plan.run([x])
    assert len(calls) == len(plan.nodes) == 2


# ---- buffer ownership -----------------------------------------------------------------------


def recycled_values(plan):
    """The values each step gives back to the pool, by name."""
    return [[plan._slot_names[s] for _, s in step[4]] for step in plan.steps]


@pytest.mark.parametrize("shape", [(N, N), (N, N + 1)])  # the pool's least size, and above
def test_a_dying_buffer_goes_back_to_the_pool(shape):
    plan = plan_of(
        [("x", Spec(shape))],
        [
            Node("exp", ("x",), ("e",), {}),
            Node("sin", ("x",), ("s",), {}),
            Node("multiply", ("e", "s"), ("m",), {}),  # written into e; s dies unread after
            Node("reduce_sum", ("m",), ("y",), {"axes": (0, 1), "keepdims": False}),
        ],
        ["y"],
    )
    # s at the product; e's buffer, which the product was written into, when m dies
    assert recycled_values(plan) == [[], [], ["s"], ["m"]]
    # and it is reused: the next call's exp or sin writes into the array sin returned here
    # (held here as well: the pool does not go by who else refers to an array)
    made = []

    def spy(fn):
        def step(*args):
            made.append(fn(*args))
            return made[-1]

        return step

    plan.steps = [
        (spy(step[0]) if node.op in ("exp", "sin") else step[0], *step[1:])
        for step, node in zip(plan.steps, plan.nodes)
    ]
    x = np.random.default_rng(0).uniform(0.1, 1.0, size=shape)
    for _ in range(3):
        np.testing.assert_allclose(plan.run([x])[0], np.sum(np.exp(x) * np.sin(x)))
    first_sin = made[1]
    assert any(array is first_sin for array in made[2:4])


def test_a_buffer_written_in_place_twice_goes_back_once_when_its_last_value_dies():
    plan = plan_of(
        [("x", Spec((N, N)))],
        [
            Node("exp", ("x",), ("e",), {}),
            Node("negative", ("e",), ("n",), {}),  # into e's buffer
            Node("sin", ("n",), ("s",), {}),  # into it again
            Node("transpose", ("s",), ("t",), {"perm": (1, 0)}),
            Node("cos", ("x",), ("c",), {}),
            Node("add", ("t", "c"), ("a",), {}),  # s dies here: into it, through its view t
            Node("reduce_sum", ("a",), ("y",), {"axes": (0, 1), "keepdims": False}),
        ],
        ["y"],
    )
    assert plan.donations == {1: 0, 2: 0, 5: 0}  # t is a view of all of the buffer
    given_back = [name for step in recycled_values(plan) for name in step]
    assert given_back.count("t") == 0  # a view is not the buffer
    assert len(given_back) == len(set(given_back))
    x = square()
    want = np.sum(np.sin(-np.exp(x)).T + np.cos(x))
    for _ in range(3):  # pooled buffers reused by the next calls give the same result
        np.testing.assert_allclose(plan.run([x])[0], want, rtol=1e-12)


def test_a_broadcast_of_the_same_size_is_not_written_into():
    # broadcast_to gives a read-only view even where it adds only axes of size 1
    plan = plan_of(
        [("x", Spec((3,))), ("y", Spec((1, 3)))],
        [
            Node("exp", ("x",), ("e",), {}),
            Node("broadcast_to", ("e",), ("b",), {"shape": (1, 3)}),
            Node("add", ("b", "y"), ("a",), {}),
        ],
        ["a"],
    )
    assert 2 not in plan.donations
    x, y = np.array([0.0, 1.0, 2.0]), np.ones((1, 3))
    np.testing.assert_array_equal(plan.run([x, y])[0], np.exp(x) + y)


def test_a_transposed_view_still_to_be_read_is_not_clobbered():
    # e dies at `sin` while its transpose t is still to be read: neither written in place
    # there (sin's result would land in e) nor pooled (cos's result would land in e)
    plan = plan_of(
        [("x", Spec((N, N)))],
        [
            Node("exp", ("x",), ("e",), {}),
            Node("transpose", ("e",), ("t",), {"perm": (1, 0)}),
            Node("sin", ("e",), ("s",), {}),
            Node("cos", ("x",), ("c",), {}),
            Node("add", ("s", "c"), ("u",), {}),
            Node("multiply", ("t", "u"), ("y",), {}),
        ],
        ["y"],
    )
    assert 2 not in plan.donations
    assert all("e" not in values for values in recycled_values(plan))
    for seed in range(3):
        x = square(seed)
        want = np.exp(x).T * (np.sin(np.exp(x)) + np.cos(x))
        np.testing.assert_allclose(plan.run([x])[0], want, rtol=1e-13)


def test_results_survive_the_next_call():
    # outputs: pooled-size elementwise results (one also read by later ops), a view of one,
    # results written in place into dying buffers, and the value and gradient of a chain
    def f(x):
        e = gnp.exp(x)
        s = gnp.sin(e) * 2.0
        return e, e.T, s, gnp.sqrt(x), gnp.tanh(s) - x

    x1, x2 = square(1), square(2)
    eng = gs.Engine()
    graph = gs.trace(f, x1)
    first = eng.evaluate(graph, x1)
    grad1 = eng.grad(gs.trace(lambda x: gnp.sum(gnp.sin(gnp.exp(x)) * x), x1), x1)
    for _ in range(3):
        eng.evaluate(graph, x2)
        eng.grad(gs.trace(lambda x: gnp.sum(gnp.sin(gnp.exp(x)) * x), x1), x2)
    want = (np.exp(x1), np.exp(x1).T, np.sin(np.exp(x1)) * 2.0, np.sqrt(x1))
    want += (np.tanh(want[2]) - x1,)
    for got, expected in zip(first, want):
        np.testing.assert_allclose(got, expected, rtol=1e-13)
    e = np.exp(x1)
    np.testing.assert_allclose(grad1, np.cos(e) * e * x1 + np.sin(e), rtol=1e-12)


@pytest.mark.parametrize("n", [4, N])
def test_a_branch_returning_its_operand_keeps_it(n):
    x = np.linspace(0.1, 1.0, n * n).reshape(n, n)

    def f(x):
        e = gnp.exp(x)
        kept = gs.cond(x[0, 0] > 0, lambda a: a, lambda a: -a, e)
        return kept, gnp.sin(e) + gnp.cos(x)  # sin(e) would be written into e

    got = gs.Engine().evaluate(gs.trace(f, x), x)
    np.testing.assert_allclose(got[0], np.exp(x))
    np.testing.assert_allclose(got[1], np.sin(np.exp(x)) + np.cos(x))


@pytest.mark.parametrize("n", [4, N])
def test_an_einsum_view_of_a_buffer_written_in_place(n):
    # einsum of one operand returns a view of it
    x = np.linspace(0.1, 1.0, n * n).reshape(n, n)

    def f(x):
        e, c = gnp.exp(x), gnp.cos(x)
        # sin(e) and sin(c) would be written into e and c, where they die
        return gnp.einsum("ij->ji", e), gnp.einsum("ii->i", c), gnp.sin(e) + gnp.sin(c)

    eng = gs.Engine()
    graph = gs.trace(f, x)
    for _ in range(2):
        got = eng.evaluate(graph, x)
        np.testing.assert_allclose(got[0], np.exp(x).T)
        np.testing.assert_allclose(got[1], np.diag(np.cos(x)))
        np.testing.assert_allclose(got[2], np.sin(np.exp(x)) + np.sin(np.cos(x)))


def test_an_einsum_view_through_a_reshape_of_a_buffer_written_in_place():
    """einsum of a reshape of e returns a view whose base is e, not its operand: it is copied
    before sin writes into e, where e dies."""
    n = 4
    x = np.linspace(0.1, 1.0, n * n)

    def f(x):
        e = gnp.exp(x)
        return gnp.einsum("ij->ji", gnp.reshape(e, (n, n))), gnp.sin(e)

    plan = Plan(Program(gs.trace(f, x)))
    assert plan.donations  # sin is written into e
    for _ in range(2):
        got = plan.run([x])
        np.testing.assert_allclose(got[0], np.exp(x).reshape(n, n).T)
        np.testing.assert_allclose(got[1], np.sin(np.exp(x)))


def test_zero_d_arguments_and_constants_reach_ops_as_numpy_scalars():
    plan = plan_of(
        [("x", Spec(()))],
        [Node("multiply", ("x", "c"), ("y",), {})],
        ["y"],
        constants={"c": np.array(3.0)},
    )
    seen = []

    def spy(fn):
        def step(*args):
            seen.extend(type(a) for a in args)
            return fn(*args)

        return step

    plan.steps = [(spy(step[0]), *step[1:]) for step in plan.steps]
    assert plan.run([np.array(2.0)])[0] == 6.0
    assert seen == [np.float64, np.float64]


def test_a_small_array_made_from_nothing_is_computed_once():
    """A `full` of at most 4096 elements is computed when the plan is built: every call returns
    that one read-only array."""
    plan = plan_of(
        [("x", Spec((8,)))],
        [
            Node("full", (), ("f",), {"shape": (8,), "dtype": "float64", "value": 2.0}),
            Node("multiply", ("x", "f"), ("y",), {}),
        ],
        ["f", "y"],
    )
    x = np.linspace(0, 1, 8)
    first, second = plan.run([x]), plan.run([x])
    np.testing.assert_array_equal(first[0], np.full(8, 2.0))
    np.testing.assert_allclose(first[1], 2 * x)
    assert first[0] is second[0] and not first[0].flags.writeable
    assert "computed once" in plan.source


def test_scan_carries_and_loop_tapes_keep_their_operands():
    x = square(3)

    def f(x):
        h0 = gnp.tanh(x)
        carry, ys = gs.scan(lambda h, xi: (gnp.sin(h) + xi, h[0]), h0, x[:4])
        return gnp.sum(carry * gnp.exp(h0)) + gnp.sum(ys)

    def reference(x):
        h0 = h = np.tanh(x)
        ys = []
        for xi in x[:4]:
            ys.append(h[0])
            h = np.sin(h) + xi
        return np.sum(h * np.exp(h0)) + np.sum(ys)

    graph = gs.trace(f, x)
    for eng in (gs.Engine(), gs.Engine(max_tape_bytes=10**9)):  # stacked carries, loop tape
        for _ in range(2):
            value, grad = eng.value_and_grad(graph, x)
            assert value == pytest.approx(reference(x), rel=1e-12)
        step = np.zeros_like(x)
        step[1, 2] = 1e-6
        numeric = (reference(x + step) - reference(x - step)) / 2e-6
        assert grad[1, 2] == pytest.approx(numeric, rel=1e-6)
