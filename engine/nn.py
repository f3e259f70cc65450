"""`gs.nn`: neural-network functions, numerically stable in value and gradient."""

from . import numpy as gnp
from .numpy import _axes, _inexact, _ndim, _operands
from .tracing import bind


def logsumexp(x, axis=None, keepdims=False):
    """log(sum(exp(x))) without overflow; its gradient (softmax) is finite even when every
    entry is -inf (it is 0 there)."""
    (x,) = _operands(x)
    x = _inexact(x)
    return bind("logsumexp", x, axes=_axes(axis, _ndim(x)), keepdims=bool(keepdims))


def log_softmax(x, axis=-1):
    return x - logsumexp(x, axis=axis, keepdims=True)


def softmax(x, axis=-1):
    return gnp.exp(log_softmax(x, axis=axis))


def sigmoid(x):
    """1 / (1 + exp(-x)) from e = exp(-|x|) <= 1, which never overflows and keeps the tails
    (sigmoid(-40) = 4.2e-18, not the 0 that 0.5 + 0.5 * tanh(x / 2) rounds to, so that
    log(sigmoid(x)) stays finite). |x| is written as a where so its derivative at 0 is right."""
    (x,) = _operands(x)
    x = _inexact(x)
    positive = x >= 0
    e = gnp.exp(gnp.where(positive, -x, x))
    return gnp.where(positive, 1 / (1 + e), e / (1 + e))


def relu(x):
    """max(x, 0) with derivative 0 at 0 (as JAX)."""
    return gnp.where(x > 0, x, 0)


def softplus(x):
    """log(1 + exp(x)) = logaddexp(x, 0), stable for large |x|."""
    return gnp.logaddexp(x, 0)
