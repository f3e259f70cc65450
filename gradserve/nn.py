"""`gs.nn`: stable neural-network functions (logsumexp, softmax, log_softmax, sigmoid, relu,
softplus)."""

from gradserve.engine.nn import log_softmax, logsumexp, relu, sigmoid, softmax, softplus  # noqa: F401
