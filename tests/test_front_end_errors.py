"""Bad input to the NumPy front end and the control-flow functions: NumPy's own error class
(ValueError/TypeError) or gs.LimitError, raised while tracing, before anything is allocated;
and results the engine hands out are not shared buffers a caller could corrupt."""

import numpy as np
import pytest

import gradserve as gs
import gradserve.numpy as gnp

A = np.arange(12.0).reshape(3, 4)

BAD = [
    ("concatenate axis out of range", lambda a: gnp.concatenate([a, a], axis=4), ValueError),
    ("stack axis out of range", lambda a: gnp.stack([a, a], axis=5), ValueError),
    ("swapaxes axis out of range", lambda a: gnp.swapaxes(a, 0, 5), ValueError),
    ("expand_dims axis out of range", lambda a: gnp.expand_dims(a, 5), ValueError),
    ("sum with a repeated axis", lambda a: gnp.sum(a, axis=(0, 0)), ValueError),
    ("cumsum over two axes", lambda a: gnp.cumsum(a, axis=(0, 1)), TypeError),
    ("concatenate nothing", lambda a: gnp.concatenate([]), ValueError),
    ("stack nothing", lambda a: gnp.stack([]), ValueError),
    ("einsum sublist form", lambda a: gnp.einsum(a, [0, 1], [1]), TypeError),
    ("arange with step 0", lambda a: gnp.arange(0, 5, 0) + a[0, 0], ValueError),
    ("eye too large to allocate", lambda a: gnp.eye(10**7) + a[0, 0], gs.LimitError),
    ("arange too large to allocate", lambda a: gnp.arange(10**12) + a[0, 0], gs.LimitError),
    ("scan over a scalar", lambda a: gs.scan(lambda c, x: (c, x), a, 3.0), ValueError),
]


@pytest.mark.parametrize("name, fn, error", BAD, ids=[b[0] for b in BAD])
def test_bad_front_end_input_is_a_clear_error(name, fn, error):
    with pytest.raises(error):
        gs.trace(fn, A)


def test_scan_step_may_output_none():
    h0, xs = np.zeros(3), np.ones((4, 3))
    graph = gs.trace(lambda h, xs: gs.scan(lambda c, x: (gnp.tanh(c + x), None), h, xs)[0], h0, xs)
    expected = h0
    for x in xs:
        expected = np.tanh(expected + x)
    np.testing.assert_allclose(gs.Engine().evaluate(graph, h0, xs), expected)


def test_a_zero_result_is_not_a_shared_writable_buffer():
    engine = gs.Engine()
    b = np.ones(3)
    graph = gs.trace(lambda a, b: gnp.sum(a * a), b, b)
    first = engine.grad(graph, b, b, argnums=(0, 1))[1]
    with pytest.raises(ValueError):
        first[:] = 3.0  # read-only, as constant outputs are
    np.testing.assert_array_equal(engine.grad(graph, b, b, argnums=(0, 1))[1], np.zeros(3))
