"""The public surface: `gradserve.numpy` holds NumPy's names only, `gs` exports the types the
backends return and the exceptions they raise, `gs.__version__`, docstrings on the API (and
their examples run), and the stats' reprs."""

from __future__ import annotations

import doctest
import importlib.metadata
import inspect

import numpy as np
import pytest
from conftest import free_port

import gradserve as gs
import gradserve.numpy as gnp

# ---- gradserve.numpy ------------------------------------------------------------------------


def _public(module):
    return {name for name in dir(module) if not name.startswith("_")}


def test_gnp_public_names_are_numpy_names():
    assert sorted(n for n in _public(gnp) if not hasattr(np, n)) == []


def test_gnp_all_lists_exactly_its_public_names():
    assert len(gnp.__all__) == len(set(gnp.__all__))
    assert set(gnp.__all__) == _public(gnp)


@pytest.mark.parametrize(
    "helper",
    [
        "Tracer",
        "bind",
        "builtins",
        "string",
        "current_builder",
        "annotations",
        "getitem",
        "mul_or_zero",
        "div_or_zero",
    ],
)
def test_gnp_has_no_private_helpers(helper):
    assert not hasattr(gnp, helper)


def test_star_import_of_gnp_gives_numpy_names_only():
    namespace: dict = {}
    exec("from gradserve.numpy import *", namespace)
    names = set(namespace) - {"__builtins__"}
    assert names == set(gnp.__all__)


def test_traced_values_are_gs_tracers():
    seen = []

    def f(x):
        seen.append(isinstance(x, gs.Tracer))
        y = gnp.sin(x) * 2
        seen.append(isinstance(y, gs.Tracer))
        return y

    gs.trace(f, np.ones(3))
    assert seen == [True, True]


# ---- gs -----------------------------------------------------------------------------------


def test_version_is_the_installed_distributions():
    assert isinstance(gs.__version__, str)
    assert gs.__version__ == importlib.metadata.version("gradserve")


def test_all_names_resolve_and_show_in_dir():
    assert len(gs.__all__) == len(set(gs.__all__))
    for name in gs.__all__:
        assert getattr(gs, name) is not None, name
    assert set(gs.__all__) <= set(dir(gs))


def test_all_lists_the_types_users_receive():
    assert {
        "Engine",
        "Client",
        "Graph",
        "Spec",
        "Port",
        "Limits",
        "Tracer",
        "Stats",
        "RemoteStats",
        "GradCheck",
        "GraphError",
        "LimitError",
        "TracerBoolError",
        "DeadlineExceeded",
        "ServiceError",
        "ServiceUnavailable",
    } <= set(gs.__all__)


def test_exported_classes_are_the_ones_used():
    from gradserve.engine import errors, graph, numerical, plan, tracing

    from gradserve import client

    assert gs.GradCheck is numerical.GradCheck
    assert gs.Stats is plan.Stats
    assert gs.RemoteStats is client.RemoteStats and issubclass(gs.RemoteStats, gs.Stats)
    assert gs.Tracer is tracing.Tracer
    assert gs.Graph is graph.Graph and gs.Spec is graph.Spec and gs.Port is graph.Port
    assert gs.GraphError is errors.GraphError and issubclass(gs.LimitError, gs.GraphError)
    assert issubclass(gs.TracerBoolError, TypeError)
    assert issubclass(gs.DeadlineExceeded, TimeoutError)
    assert issubclass(gs.ServiceUnavailable, gs.ServiceError)


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError):
        gs.NoSuchThing  # noqa: B018


# ---- what the backends return and raise ----------------------------------------------------------


def _square_sum():
    return gs.trace(lambda x: gnp.sum(x * x), np.ones(3))


def test_check_grad_returns_a_gradcheck(backend):
    report = backend.check_grad(_square_sum(), np.arange(3.0))
    assert isinstance(report, gs.GradCheck)
    assert report.ok and report.method == "central"


def test_last_stats_types(backend):
    backend.grad(_square_sum(), np.arange(3.0))
    stats = backend.last_stats
    assert isinstance(stats, gs.Stats)
    if isinstance(backend, gs.Client):
        assert type(stats) is gs.RemoteStats
    else:
        assert type(stats) is gs.Stats


def test_trace_returns_a_graph_of_ports_and_specs():
    graph = _square_sum()
    assert isinstance(graph, gs.Graph)
    assert all(isinstance(p, gs.Port) and isinstance(p.spec, gs.Spec) for p in graph.inputs)
    assert isinstance(gs.Engine().limits, gs.Limits)


def test_backend_raises_the_exported_exceptions(backend):
    endless = gs.trace(
        lambda x: gs.while_loop(lambda v: v < 10.0, lambda v: v + 1.0, x, max_iterations=3), 0.0
    )
    with pytest.raises(gs.LimitError):
        backend.evaluate(endless, 0.0)
    looped = gs.trace(lambda x: gs.while_loop(lambda v: v < 2.0, lambda v: v * v + 1.0, x), 0.5)
    with pytest.raises(gs.GraphError):
        backend.hessian(looped, 0.5)


def test_trace_raises_tracer_bool_error():
    with pytest.raises(gs.TracerBoolError):
        gs.trace(lambda x: x if x > 0 else -x, 1.0)


def test_client_raises_service_unavailable_when_nothing_listens():
    with gs.Client(f"127.0.0.1:{free_port()}", timeout=10, retries=0) as cli:
        with pytest.raises(gs.ServiceUnavailable):
            cli.evaluate(_square_sum(), np.ones(3))


# ---- docstrings -------------------------------------------------------------------------------


def _public_members(cls):
    return sorted(
        name
        for name, value in vars(cls).items()
        if not name.startswith("_") and (callable(value) or isinstance(value, property))
    )


API = [
    "check_grad",
    "evaluate",
    "grad",
    "hessian",
    "hvp",
    "jacobian",
    "jvp",
    "last_stats",
    "value_and_grad",
    "vjp",
]


def test_engine_and_client_have_the_same_api():
    assert set(API) <= set(_public_members(gs.Engine))
    assert set(API) <= set(_public_members(gs.Client))
    assert set(_public_members(gs.Engine)) - set(API) == {"tape_bytes_in_use", "plan_stats"}
    assert set(_public_members(gs.Client)) - set(API) == {"close"}


@pytest.mark.parametrize("cls", ["Engine", "Client"])
def test_every_public_method_has_a_numpy_style_docstring(cls):
    cls = getattr(gs, cls)
    assert "Parameters" in inspect.getdoc(cls)
    for name in _public_members(cls):
        doc = inspect.getdoc(getattr(cls, name)) or ""
        assert "Parameters\n----------" in doc or "Returns\n-------" in doc, name


def _documented():
    yield "trace", gs.trace
    yield "minimize", gs.minimize
    for name in ("numeric_grad", "to_sympy", "symbolic_derivative", "expression_size"):
        yield name, getattr(gs, name)
    yield "Graph.from_bytes", gs.Graph.from_bytes
    yield "Graph.to_bytes", gs.Graph.to_bytes
    for name in ("digest", "input_names", "output_names"):
        yield f"Graph.{name}", getattr(gs.Graph, name)


@pytest.mark.parametrize("name, obj", list(_documented()))
def test_functions_have_numpy_style_docstrings(name, obj):
    doc = inspect.getdoc(obj) or ""
    assert "Parameters\n----------" in doc or "Returns\n-------" in doc, name


@pytest.mark.parametrize("name", gs.__all__)
def test_every_exported_name_has_a_docstring(name):
    assert inspect.getdoc(getattr(gs, name)), name


def test_docstring_examples_run():
    from gradserve.engine import engine, graph, tracing

    from gradserve.optimize import minimize

    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    globs = {"gs": gs, "gnp": gnp, "np": np}
    tests = []
    for obj in (engine.Engine, tracing.trace, graph.Spec, graph.Graph, minimize):
        tests += finder.find(obj, globs=dict(globs))
    assert sum(len(t.examples) for t in tests) > 10
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


def test_client_docstring_examples_run_against_a_server(server):
    """The Client's examples are the Engine's, run against a live server."""
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    address = server.address
    examples = 0
    for name in sorted(n for n in vars(gs.Client) if not n.startswith("_")):
        doc = inspect.getdoc(getattr(gs.Client, name)) or ""
        doc = doc.replace('gs.Client("localhost:50051")', f"gs.Client({address!r})")
        test = parser.get_doctest(doc, {"gs": gs, "gnp": gnp, "np": np}, name, None, 0)
        examples += len(test.examples)
        runner.run(test)
    assert examples >= 9
    assert runner.summarize(verbose=False).failed == 0


# ---- stats reprs -----------------------------------------------------------------------------


def test_stats_repr_shows_every_field():
    stats = gs.Stats(1, 2, 3, 4)
    text = repr(stats)
    for name in gs.Stats._fields:
        assert f"{name}=" in text


def test_remote_stats_repr_shows_every_field_and_compute_seconds(remote):
    remote.grad(_square_sum(), np.arange(3.0))
    stats = remote.last_stats
    text = repr(stats)
    assert text.startswith("RemoteStats(")
    for name in gs.Stats._fields:
        assert f"{name}={getattr(stats, name)!r}" in text
    assert f"compute_seconds={stats.compute_seconds!r}" in text
    assert stats.compute_seconds > 0


def test_fresh_remote_stats_repr():
    assert repr(gs.RemoteStats()) == (
        "RemoteStats(tape_bytes=0, tape_entries=0, peak_bytes=0, recomputed_ops=0, "
        "compute_seconds=0.0)"
    )
