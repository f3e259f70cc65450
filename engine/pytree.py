"""Nested tuples and lists of arrays (a loop's carry), flattened to a list of leaves and back."""


def flatten(tree):
    if tree is None:  # no arrays (a scan step's `None` output)
        return [], "none"
    if isinstance(tree, (tuple, list)):
        leaves, shapes = [], []
        for item in tree:
            item_leaves, item_def = flatten(item)
            leaves += item_leaves
            shapes.append(item_def)
        return leaves, (type(tree), tuple(shapes))
    return [tree], None


def unflatten(treedef, leaves):
    leaves = list(leaves)
    tree = _build(treedef, leaves)
    if leaves:
        raise ValueError("more leaves than the structure holds")
    return tree


def _build(treedef, leaves):
    if treedef == "none":
        return None
    if treedef is None:
        return leaves.pop(0)
    kind, children = treedef
    return kind(_build(child, leaves) for child in children)
