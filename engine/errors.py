"""The exceptions the engine raises; the client raises the same classes."""


class GraphError(ValueError):
    """An invalid graph, whether built, decoded or received.

    `where` names the offending node or field (for example ``"node 3 'sin' -> %3"``);
    the message always contains it.
    """

    def __init__(self, message: str, where: str = "graph"):
        super().__init__(f"{where}: {message}")
        self.where = where
        self.reason = message


class LimitError(GraphError):
    """A graph or call that would pass one of the configured limits (nodes, elements, tape
    bytes). A GraphError, since that graph cannot run here; on the wire RESOURCE_EXHAUSTED."""


class TracerBoolError(TypeError):
    """Python control flow (`if`, `while`, `bool()`, `float()`) on a traced value."""
