"""Size limits every graph is checked against before anything is allocated."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_nodes: int = 1_000_000  # nodes in one graph, subgraphs included
    max_elements: int = 1 << 28  # elements of any one value (2 GiB of float64)
    max_name_length: int = 256


DEFAULT_LIMITS = Limits()
