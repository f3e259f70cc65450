"""Reverse mode over graphs of several outputs where some are not differentiable (integer):
those get no cotangent, and every output after them still does. Closed forms."""

import numpy as np
import pytest

import gradserve as gs
import gradserve.numpy as gnp

ENG = gs.Engine()
X = np.array([0.3, -1.2, 2.0])


@pytest.mark.parametrize("integer_first", [True, False])
def test_cotangents_of_the_float_outputs_around_an_integer_one(integer_first):
    def f(x):
        outs = [gnp.sum(gnp.sin(x)), gnp.argmax(x), x * x]
        return tuple(outs[1:2] + outs[:1] + outs[2:]) if integer_first else tuple(outs)

    graph = gs.trace(f, X)
    w = np.array([0.5, -2.0, 1.5])
    cotangents = (None, 1.0, w) if integer_first else (1.0, None, w)
    out, (ct,) = ENG.vjp(graph, (X,), cotangents)
    # d/dx [sum(sin x) + w . x^2] = cos x + 2 w x
    np.testing.assert_allclose(ct, np.cos(X) + 2 * w * X, rtol=1e-14)
    assert int(out[0 if integer_first else 1]) == 2
