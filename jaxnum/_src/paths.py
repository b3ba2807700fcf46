"""Parameter paths that name the same leaf in every form a Flax parameter tree takes.

The same kernel sits at ``("hidden", "kernel")`` in linen params and in an NNX
pure dict (``nnx.to_pure_dict``), but at ``("hidden", "kernel", .value)`` in an
``nnx.State`` of ``nnx.Param`` variables, in what ``nnx.Optimizer`` hands to
``tx.init``, and in its state (``OptArray`` leaves): a Flax box (an
``nnx.Variable``, or a linen ``nn.Partitioned``) flattens to its value under the
attribute key ``value``. `param_path` drops that key, so code that finds
layers by path (K-FAC, LoRA) sees the same paths in every form.
"""

from __future__ import annotations

from typing import Any

import jax

_BOX_VALUE = "value"


def param_path(path: tuple) -> tuple:
    """``path`` (a pytree key path) without the trailing ``.value`` key of a Flax box.

    Only an attribute key (``jax.tree_util.GetAttrKey``) is dropped: a dict key
    ``"value"`` (a linen module named ``value``) is part of the path.
    """
    if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == _BOX_VALUE:
        return tuple(path[:-1])
    return tuple(path)


def plain_keys(path: tuple) -> tuple:
    """A key path as plain keys (dict keys, sequence indices, attribute names), box key dropped."""
    out = []
    for k in param_path(path):
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                out.append(getattr(k, attr))
                break
        else:
            out.append(str(k))
    return tuple(out)


def path_string(path: tuple) -> str:
    """``jax.tree_util.keystr`` of the path without the box key: ``"['hidden']['kernel']"``."""
    return jax.tree_util.keystr(param_path(path))


def leaves_by_path(tree: Any) -> dict[tuple, Any]:
    """``{plain keys: array leaf}`` of a parameter tree in any of its forms (boxes unwrapped)."""
    return {plain_keys(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def describe_paths(paths, limit: int = 8) -> str:
    """``"a/kernel, a/bias, ... (12 in all)"``: a readable list for error messages."""
    names = ["/".join(map(str, p)) for p in paths]
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "") or "none"
