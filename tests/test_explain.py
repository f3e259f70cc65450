"""gs.explain and `gradserve explain`: the evaluation trace with tangents or adjoints, in the
layout of Baydin et al.'s survey of automatic differentiation (tables 2 and 3), checked
against that survey's worked example and against the engine's own derivatives."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

import gradserve as gs
import gradserve.numpy as gnp


def survey(x1, x2):
    return gnp.log(x1) + x1 * x2 - gnp.sin(x2)


@pytest.fixture(scope="module")
def graph():
    return gs.trace(survey, 2.0, 5.0)


# gs.trace records ln(x1), x1*x2, their sum, sin(x2), the difference: the survey's v_3 = sin v_0
# is v_4 here and its v_4 = v_1 + v_2 is v_3.
DEFINITIONS = [
    "v_{-1} = x1",
    "v_0 = x2",
    "v_1 = log(v_{-1})",
    "v_2 = v_{-1} * v_0",
    "v_3 = v_1 + v_2",
    "v_4 = sin(v_0)",
    "v_5 = v_3 - v_4",
    "y = v_5",
]
PRIMALS = [2, 5, math.log(2), 10, math.log(2) + 10, math.sin(5), math.log(2) + 10 - math.sin(5)]
# rounded as the survey prints them
SURVEY_PRIMALS = [2, 5, 0.693, 10, 10.693, -0.959, 11.652, 11.652]
SURVEY_TANGENTS = [1, 0, 0.5, 5, 5.5, 0, 5.5, 5.5]
SURVEY_ADJOINTS = [5.5, 1.716, 1, 1, 1, -1, 1, 1]


def values(table, field):
    return [float(getattr(row, field)) for row in table.rows]


def test_the_rows_are_the_surveys_evaluation_trace(graph):
    table = gs.explain(graph, 2.0, 5.0)
    assert [row.definition for row in table.rows] == DEFINITIONS
    assert [row.name for row in table.rows] == [d.split(" = ")[0] for d in DEFINITIONS]
    assert [row.op for row in table.rows] == [
        "input",
        "input",
        "log",
        "multiply",
        "add",
        "sin",
        "subtract",
        "output",
    ]
    assert table["v_2"].inputs == ("v_{-1}", "v_0")
    assert table["v_{-1}"].graph_name == "x1" and table["y"].graph_name == table["v_5"].graph_name
    np.testing.assert_allclose(values(table, "primal"), PRIMALS + [PRIMALS[-1]], rtol=1e-15)
    np.testing.assert_allclose(values(table, "primal"), SURVEY_PRIMALS, atol=5e-4)


def test_forward_mode_reproduces_the_surveys_tangents(graph):
    table = gs.explain(graph, 2.0, 5.0, mode="forward", wrt=0)
    assert table.mode == "forward" and table.wrt == 0 and table.output is None
    np.testing.assert_allclose(values(table, "derivative"), SURVEY_TANGENTS, atol=1e-12)
    assert float(table["y"].derivative) == 5.5
    # seeding x2 instead: the tangents are d v_i / d x2
    by_name = gs.explain(graph, 2.0, 5.0, wrt="x2")
    assert by_name.wrt == 1
    expected = [0, 1, 0, 2, 2, math.cos(5), 2 - math.cos(5), 2 - math.cos(5)]
    np.testing.assert_allclose(values(by_name, "derivative"), expected, rtol=1e-14)


def test_reverse_mode_reproduces_the_surveys_adjoints(graph):
    table = gs.explain(graph, 2.0, 5.0, mode="reverse")
    assert table.mode == "reverse" and table.wrt is None and table.output == 0
    np.testing.assert_allclose(values(table, "derivative"), SURVEY_ADJOINTS, atol=5e-4)
    assert float(table["v_{-1}"].derivative) == 5.5
    assert math.isclose(float(table["v_0"].derivative), 2 - math.cos(5), rel_tol=1e-15)
    grads = gs.Engine().grad(graph, 2.0, 5.0, argnums=(0, 1))
    assert float(table["v_{-1}"].derivative) == grads[0]
    assert float(table["v_0"].derivative) == grads[1]


def test_the_printed_table_is_aligned_and_shows_the_survey_numbers(graph):
    forward = str(gs.explain(graph, 2.0, 5.0))
    reverse = str(gs.explain(graph, 2.0, 5.0, mode="reverse"))
    assert forward.splitlines()[0].startswith("forward mode")
    assert reverse.splitlines()[0].startswith("reverse mode")
    for text, column in ((forward, "tangent"), (reverse, "adjoint")):
        lines = text.splitlines()
        assert lines[1].split() == ["definition", "primal", column, "graph"]
        body = lines[3:]
        assert len(body) == 8
        # the graph column starts at the same place on every line
        starts = {len(line) - len(line.split()[-1]) for line in lines[1:2] + body}
        assert len(starts) == 1
        for definition in DEFINITIONS:
            assert any(line.startswith(definition + " ") for line in body)
    row = next(line for line in forward.splitlines() if line.startswith("v_5 = v_3 - v_4"))
    assert row.split()[-3:] == ["11.652", "5.500", "%4"]
    row = next(line for line in reverse.splitlines() if line.startswith("v_0 = x2"))
    assert row.split()[-3:] == ["5.000", "1.716", "x2"]
    row = next(line for line in reverse.splitlines() if line.startswith("v_4 = sin(v_0)"))
    assert row.split()[-3:] == ["-0.959", "-1.000", "%3"]
    markdown = gs.explain(graph, 2.0, 5.0)._repr_markdown_()
    assert "| `v_1 = log(v_{-1})` | `0.693` | `0.500` | `%0` |" in markdown


def layers(x, w, b, s):
    h = gnp.tanh(x @ w + b)
    return gnp.sum(h * h) * s + gnp.sum(gnp.exp(-x / 2.0)) / (1.0 + s * s)


def test_arrays_and_several_inputs():
    rng = np.random.default_rng(0)
    x, w, b = rng.normal(size=(3, 4)), rng.normal(size=(4, 5)), rng.normal(size=5)
    graph = gs.trace(layers, x, w, b, 0.5)
    table = gs.explain(graph, x, w, b, 0.5, mode="forward", wrt="w")
    assert [row.name for row in table.rows[:4]] == ["v_{-3}", "v_{-2}", "v_{-1}", "v_0"]
    assert table["v_{-3}"].primal.shape == (3, 4)
    assert table["v_{-2}"].derivative.shape == (4, 5) and np.all(table["v_{-2}"].derivative == 1)
    assert np.all(table["v_{-3}"].derivative == 0)
    text = str(table)
    # arrays are summarised: dtype, shape, the first values, the mean
    assert "float64[3,4] [" in text and "float64[4,5] [1.000 1.000 1.000 ...] mean=1.000" in text
    assert "mean=" in text
    assert all(len(line) < 200 for line in text.splitlines())
    # array constants are named c_k and listed, scalar ones shown by value
    assert any("/ 2" in row.definition for row in table.rows)
    # the forward tangent of y is the directional derivative along the seed
    direction = rng.normal(size=(4, 5))
    seeded = gs.explain(graph, x, w, b, 0.5, wrt=1, tangent=direction)
    _, expected = gs.Engine().jvp(
        graph, (x, w, b, 0.5), (np.zeros((3, 4)), direction, np.zeros(5), 0.0)
    )
    np.testing.assert_allclose(seeded["y"].derivative, expected, rtol=1e-13)
    np.testing.assert_array_equal(seeded.seed, direction)


def test_summaries_of_small_and_non_float_arrays():
    graph = gs.trace(lambda x: gnp.sum(gnp.where(x > 0, x, 0.0) @ np.ones((3, 2))), np.ones(3))
    table = gs.explain(graph, np.array([-1.0, 0.5, 2.0]), mode="reverse")
    text = str(table)
    assert "float64[3] [-1.000 0.500 2.000]" in text
    assert "bool[3] [False True True]" in text
    comparison = next(row for row in table.rows if row.op == "greater")
    assert comparison.derivative is None and comparison.inputs == ("v_0", "0")
    assert "n/a" in text
    assert "c_1 = float64[3,2] [1.000 1.000 1.000 ...] mean=1.000" in text
    np.testing.assert_array_equal(table["v_0"].derivative, [0, 2, 2])


def bigger(x, y, a):
    def body(i, carry):
        return gnp.sin(carry) * a + carry * y[i]

    z = gs.fori_loop(0, 3, body, x)
    u = gs.cond(gnp.sum(z) > 0, lambda v: v * v, lambda v: -v, z)
    return gnp.sum(u * gnp.cos(x)) + gs.nn.logsumexp(z * a) + gnp.sum(gnp.sqrt(y * y + 1.0))


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_input_adjoints_equal_engine_grad_at_random_points(seed):
    rng = np.random.default_rng(seed)
    x, y, a = rng.normal(size=4), rng.normal(size=3), float(rng.normal())
    graph = gs.trace(bigger, x, y, a)
    assert len(graph.nodes) > 8
    eng = gs.Engine()
    table = gs.explain(graph, x, y, a, mode="reverse")
    grads = eng.grad(graph, x, y, a, argnums=(0, 1, 2))
    for row, grad in zip(table.rows[:3], grads):
        np.testing.assert_array_equal(row.derivative, grad)
    value = eng.evaluate(graph, x, y, a)
    assert float(table["y"].primal) == pytest.approx(float(value), rel=1e-14)
    # forward mode along one coordinate of x gives that component of the gradient
    forward = gs.explain(graph, x, y, a, wrt=0, tangent=np.eye(4)[1])
    assert float(forward["y"].derivative) == pytest.approx(grads[0][1], rel=1e-12)
    # the adjoint of the last node is the seed, 1
    last = table.rows[-2]
    assert last.op != "output" and float(last.derivative) == 1.0


def test_intermediate_adjoints_are_derivatives_of_y_by_those_values():
    """y = ln(x1) exp(x1 x2) - sin(x2^2); each adjoint is dy/dv_i with what v_i is computed
    from held fixed: dy/d ln(x1) = exp(x1 x2), dy/d (x1 x2) = ln(x1) exp(x1 x2), ..."""
    rng = np.random.default_rng(5)
    x1, x2 = rng.uniform(0.5, 3, size=2)
    graph = gs.trace(lambda x1, x2: gnp.log(x1) * gnp.exp(x1 * x2) - gnp.sin(x2 * x2), x1, x2)
    table = gs.explain(graph, x1, x2, mode="reverse")
    ln, e = math.log(x1), math.exp(x1 * x2)
    adjoint = {row.definition: float(row.derivative) for row in table.rows}
    assert adjoint["v_1 = log(v_{-1})"] == pytest.approx(e)
    assert adjoint["v_3 = exp(v_2)"] == pytest.approx(ln)
    assert adjoint["v_2 = v_{-1} * v_0"] == pytest.approx(ln * e)
    assert adjoint["v_4 = v_1 * v_3"] == 1
    assert adjoint["v_5 = square(v_0)"] == pytest.approx(-math.cos(x2 * x2))
    assert adjoint["v_6 = sin(v_5)"] == -1


def test_several_outputs_seed_one_of_them():
    graph = gs.trace(lambda x: (x * x, gnp.sum(gnp.sin(x))), np.array([1.0, 2.0]))
    table = gs.explain(graph, np.array([1.0, 2.0]), mode="reverse", output=1)
    assert [row.name for row in table.rows][-2:] == ["y_1", "y_2"]
    np.testing.assert_array_equal(table["y_1"].derivative, [0, 0])
    assert float(table["y_2"].derivative) == 1
    np.testing.assert_allclose(table["v_0"].derivative, np.cos([1.0, 2.0]), rtol=1e-15)
    first = gs.explain(graph, np.array([1.0, 2.0]), mode="reverse", cotangent=[1.0, -1.0])
    np.testing.assert_allclose(first["v_0"].derivative, [2.0, -4.0])


def test_bad_calls_are_refused(graph):
    with pytest.raises(ValueError, match="mode"):
        gs.explain(graph, 2.0, 5.0, mode="backward")
    with pytest.raises(ValueError, match="forward mode"):
        gs.explain(graph, 2.0, 5.0, mode="reverse", wrt=0)
    with pytest.raises(ValueError, match="reverse mode"):
        gs.explain(graph, 2.0, 5.0, output=0)
    with pytest.raises(ValueError, match="out of range"):
        gs.explain(graph, 2.0, 5.0, wrt=2)
    with pytest.raises(ValueError, match="wrt='z'"):
        gs.explain(graph, 2.0, 5.0, wrt="z")
    with pytest.raises(ValueError, match="shape"):
        gs.explain(graph, 2.0, 5.0, tangent=np.ones(2))
    with pytest.raises(TypeError, match="takes 2 arguments"):
        gs.explain(graph, 2.0)
    ints = gs.trace(lambda n, x: x * n, 3, 1.0)
    with pytest.raises(TypeError, match="not differentiable"):
        gs.explain(ints, 3, 1.0, wrt=0)
    table = gs.explain(ints, 3, 1.0, mode="reverse")
    assert table["v_{-1}"].derivative is None and float(table["v_0"].derivative) == 3


# ---- gradserve explain -----------------------------------------------------------------------


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "gradserve", "explain", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def table_rows(text):
    """definition -> [primal, derivative] of each printed table's row (scalars only)."""
    rows = {}
    for line in text.splitlines():
        if " = " in line and not line.startswith(("forward", "reverse")):
            definition = line.split("  ")[0].strip()
            rows.setdefault(definition, []).append(line.split()[-3:-1])
    return rows


def test_cli_prints_the_surveys_example_in_both_modes():
    done = run_cli("--example")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "forward mode" in out and "reverse mode" in out
    rows = table_rows(out)
    assert rows["y = v_5"] == [["11.652", "5.500"], ["11.652", "1.000"]]
    assert rows["v_{-1} = x1"] == [["2.000", "1.000"], ["2.000", "5.500"]]
    assert rows["v_0 = x2"] == [["5.000", "0.000"], ["5.000", "1.716"]]
    assert rows["v_4 = sin(v_0)"] == [["-0.959", "0.000"], ["-0.959", "-1.000"]]
    only = run_cli("--example", "--mode", "reverse")
    assert only.returncode == 0 and "forward mode" not in only.stdout
    assert table_rows(only.stdout)["v_0 = x2"] == [["5.000", "1.716"]]


def test_cli_reads_a_saved_graph(tmp_path, graph):
    path = tmp_path / "survey.graph"
    path.write_bytes(graph.to_bytes())
    done = run_cli(str(path), "--args", "2", "5", "--mode", "reverse")
    assert done.returncode == 0, done.stderr
    assert done.stdout == str(gs.explain(graph, 2.0, 5.0, mode="reverse")) + "\n"
    done = run_cli(str(path), "--args", "2", "5", "--wrt", "x2")
    assert done.returncode == 0, done.stderr
    assert done.stdout == str(gs.explain(graph, 2.0, 5.0, wrt=1)) + "\n"
    arrays = tmp_path / "arrays.graph"
    arrays.write_bytes(gs.trace(lambda x, s: gnp.sum(x * s), np.ones(5), 1.0).to_bytes())
    done = run_cli(str(arrays), "--args", "[1, 2, 3, 4, 5]", "2", "--mode", "forward")
    assert done.returncode == 0, done.stderr
    assert "float64[5] [1.000 2.000 3.000 ...] mean=3.000" in done.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        ((), "GRAPH_FILE or --example"),
        (("--example", "--mode", "reverse", "--wrt", "0"), "--wrt"),
        (("missing.graph", "--args", "1"), "No such file"),
        (("--example", "--args", "1"), "takes 2 values"),
        (("--example", "--args", "1", "x"), "not a number"),
    ],
)
def test_cli_refuses_bad_calls(args, message, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "gradserve", "explain", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_cli_refuses_a_file_that_is_not_a_graph(tmp_path):
    path = tmp_path / "junk.graph"
    path.write_bytes(b"\x00not a graph")
    done = run_cli(str(path), "--args", "1")
    assert done.returncode == 2 and "gradserve.v1.Graph" in done.stderr
