"""Size limits every graph is checked against before anything is allocated."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Size limits a graph and its arrays are checked against before anything is allocated.

    Parameters
    ----------
    max_nodes : int, optional
        Nodes in one graph, subgraphs included (a subgraph counts once for each node that
        holds it). Default 1_000_000.
    max_elements : int, optional
        Elements of any one value of a graph (an input, a constant, an intermediate result)
        and of any array a server decodes from a request. Default 2**28 (2 GiB of float64).
    max_name_length : int, optional
        Characters in the name of a value. Default 256.

    Over `max_nodes` or `max_elements` is a `gs.LimitError`; a longer name, a
    `gs.GraphError`.
    """

    max_nodes: int = 1_000_000  # nodes in one graph, subgraphs included
    max_elements: int = 1 << 28  # elements of any one value (2 GiB of float64)
    max_name_length: int = 256


DEFAULT_LIMITS = Limits()
