"""Small helpers shared by the K-FAC modules (private to :mod:`jaxnum.kfac`)."""

from __future__ import annotations

from typing import Any

Layer = tuple[Any, ...]
"""A captured layer's path in the parameters: a tuple of module names (and indices)."""


def python_zero(value: Any) -> bool:
    """True for a Python number equal to 0.

    An array (traced or not: what ``optax.inject_hyperparams`` passes, to init
    and to update alike) is never "zero", so a chain built from it has the same
    parts in both and a traced 0 works.
    """
    return isinstance(value, int | float) and value == 0


def layer_name(layer: Layer) -> str:
    """``("a", 0, "b")`` -> ``"a/0/b"`` for messages."""
    return "/".join(map(str, layer))
