"""Pytrees: nested tuples, lists, dicts and namedtuples of arrays and numbers, and `None` (a
subtree with no leaves), as JAX has them; flattened to a list of leaves and a treedef, and
back. The structures are optree's."""

import optree

NAMESPACE = "gradserve"


def flatten(tree):
    """(leaves, treedef): the leaves in order (dict keys sorted), and the structure."""
    return optree.tree_flatten(tree, none_is_leaf=False, namespace=NAMESPACE)


def flatten_with_path(tree):
    """(paths, leaves, treedef): `flatten`, with the keys leading to each leaf."""
    return optree.tree_flatten_with_path(tree, none_is_leaf=False, namespace=NAMESPACE)


def unflatten(treedef, leaves):
    """The tree of structure `treedef` holding `leaves` (a ValueError when they do not fit)."""
    return optree.tree_unflatten(treedef, list(leaves))


NONE = flatten(None)[1]  # the structure of `None`: no leaves
