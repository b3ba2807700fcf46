"""Mixed-precision policy: which dtype parameters, computation and outputs use."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxnum._src.checks import floating_dtype

# Names accepted by Policy.parse, besides any name numpy/jax know as a float dtype.
_DTYPE_ALIASES = {
    "f32": "float32",
    "fp32": "float32",
    "full": "float32",
    "single": "float32",
    "f16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "f64": "float64",
    "fp64": "float64",
    "double": "float64",
}
_ROLE_ALIASES = {
    "p": "param",
    "param": "param",
    "params": "param",
    "c": "compute",
    "compute": "compute",
    "o": "output",
    "output": "output",
    "out": "output",
}


def _as_float_dtype(value: Any, argname: str) -> np.dtype:
    """A floating dtype from a dtype or a name/alias; a name it does not know is a ValueError."""
    if not isinstance(value, str):
        return floating_dtype(value, "Policy", argname)
    name = _DTYPE_ALIASES.get(value.strip().lower(), value.strip().lower())
    try:
        return floating_dtype(name, "Policy", argname)
    except TypeError as e:
        raise ValueError(
            f"{e}; use e.g. float32, bfloat16, float16 or one of {sorted(_DTYPE_ALIASES)}"
        ) from e


def _cast_floating(tree: Any, dtype: np.dtype) -> Any:
    """Casts floating-point array leaves to ``dtype``; integer, bool and other leaves pass."""

    def cast(x):
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating):
            return x.astype(dtype)
        return x

    return jax.tree.map(cast, tree)


@dataclasses.dataclass(frozen=True)
class Policy:
    """A mixed-precision policy: the dtypes of parameters, computation and outputs.

    The usual recipe keeps float32 master parameters, computes in bfloat16 or
    float16 and returns float32 outputs (so the loss is reduced in float32).
    Casting touches floating leaves only; integer and boolean leaves (token ids,
    step counters, masks) pass through unchanged. A Policy is hashable, so it can
    be a static argument of ``jax.jit``.

    Attributes:
      param_dtype: dtype parameters are stored and updated in.
      compute_dtype: dtype of the forward and backward computation.
      output_dtype: dtype of the model outputs.

    Examples:
      >>> p = Policy.parse("params=float32,compute=bfloat16,output=float32")
      >>> p.cast_to_compute({"w": jnp.ones(2), "ids": jnp.arange(2)})["w"].dtype
      dtype(bfloat16)
      >>> import flax.linen as nn
      >>> layer = nn.Dense(4, **p.flax_kwargs())  # dtype=bfloat16, param_dtype=float32

    References:
      Micikevicius et al., "Mixed Precision Training", ICLR 2018,
      https://arxiv.org/abs/1710.03740.
    """

    param_dtype: Any = jnp.float32
    compute_dtype: Any = jnp.float32
    output_dtype: Any = jnp.float32

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = _as_float_dtype(getattr(self, field.name), field.name)
            object.__setattr__(self, field.name, value)

    @classmethod
    def parse(cls, spec: str) -> Policy:
        """Builds a policy from ``"params=float32,compute=bfloat16,output=float32"``.

        Keys may be abbreviated (``p``, ``c``, ``o``) and dtypes given by alias
        (``f32``, ``bf16``, ``fp16``, ``half``...). A missing ``params`` means
        float32, a missing ``compute`` follows params, a missing ``output``
        follows compute. A bare dtype (``"bf16"``) sets all three.

        Raises:
          ValueError: naming the unknown key or dtype.
        """
        if not isinstance(spec, str):
            raise TypeError(f"Policy.parse: spec must be a str, got {type(spec).__name__}")
        spec = spec.strip()
        if spec and "=" not in spec:
            dt = _as_float_dtype(spec, "spec")
            return cls(dt, dt, dt)
        roles: dict[str, np.dtype] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key, sep, value = part.partition("=")
            role = _ROLE_ALIASES.get(key.strip().lower())
            if not sep or role is None:
                raise ValueError(
                    f"Policy.parse: cannot read {part!r}; expected key=dtype with key one "
                    "of params, compute, output (or p, c, o)"
                )
            if role in roles:
                raise ValueError(f"Policy.parse: {role} given twice in {spec!r}")
            roles[role] = _as_float_dtype(value, role)
        param = roles.get("param", jnp.dtype(jnp.float32))
        compute = roles.get("compute", param)
        output = roles.get("output", compute)
        return cls(param, compute, output)

    def cast_to_param(self, tree: Any) -> Any:
        """Casts the floating leaves of ``tree`` to ``param_dtype``."""
        return _cast_floating(tree, self.param_dtype)

    def cast_to_compute(self, tree: Any) -> Any:
        """Casts the floating leaves of ``tree`` to ``compute_dtype``."""
        return _cast_floating(tree, self.compute_dtype)

    def cast_to_output(self, tree: Any) -> Any:
        """Casts the floating leaves of ``tree`` to ``output_dtype``."""
        return _cast_floating(tree, self.output_dtype)

    def flax_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for Flax layers: ``dtype`` (compute) and ``param_dtype``.

        Examples:
          >>> import flax.linen as nn
          >>> nn.Dense(8, **Policy.parse("p=f32,c=bf16").flax_kwargs()).dtype
          dtype(bfloat16)
        """
        return {"dtype": self.compute_dtype, "param_dtype": self.param_dtype}

    def __str__(self) -> str:
        return (
            f"params={self.param_dtype.name},compute={self.compute_dtype.name},"
            f"output={self.output_dtype.name}"
        )
