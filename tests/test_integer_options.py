"""Integer options (sizes and counts) are checked one way everywhere (issue 21).

Every public function or factory with an integer option takes Python ints and
numpy integers alike (the numpy one gives the same result bit for bit: the
check hands on ``int(value)``), and refuses a float, a bool, a string or a jax
array with ``TypeError`` and a value out of range with ``ValueError``, both in
the form ``"fn: arg must be a Python int >= k, got ..."``. A jax array (what
``optax.inject_hyperparams`` makes of a numeric argument) gets a message naming
``static_args``; with the option in ``static_args`` the factories work under
``inject_hyperparams`` and equal the plain transformation.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxnum as jn
from jaxnum import kfac

KEY = jax.random.key(0)
X3 = jnp.array([1.0, -2.0, 0.5])
SPD = jnp.array([[4.0, 1.0, 0.0, 0.0], [1.0, 3.0, 0.5, 0.0], [0.0, 0.5, 2.0, 0.1], [0, 0, 0.1, 1]])
RECT = jnp.arange(12.0).reshape(4, 3) ** 0.5
KFAC_PARAMS = {
    "hidden": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)},
    "out": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)},
}


def _quad(x):
    return jnp.sum((x - 1.0) ** 2 * jnp.arange(1.0, 4.0)) + 0.1 * jnp.sum(x**4)


def _matvec(u):
    return SPD @ u


class _MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return kfac.Dense(2, name="out")(jnp.tanh(kfac.Dense(3, name="hidden")(x)))


class _NNXModel(nnx.Module):
    def __init__(self):
        self.dense = kfac.nnx.Linear(2, 2, rngs=nnx.Rngs(0))

    def __call__(self, x):
        return self.dense(x)


class Option(NamedTuple):
    """An integer option: ``call(value)`` runs the public function with it."""

    function: str  # the public name (test ids)
    fn: str  # the function name its messages start with
    arg: str
    good: int
    minimum: int
    call: Callable[[Any], Any]
    maximum: int | None = None
    # With np.int64(good): "equal" compares the result with the Python int's (cheap calls
    # only), "accept" checks that it is taken; None: the refusals only (costly calls).
    run: str | None = None


O = Option
OPTIONS = [
    # jaxnum.precision
    O("jn.online_logsumexp", "online_logsumexp", "block_size", 2, 1,
      lambda v: jn.online_logsumexp(RECT, block_size=v)),
    O("jn.online_softmax", "online_softmax", "block_size", 2, 1,
      lambda v: jn.online_softmax(RECT, block_size=v), run="equal"),
    O("jn.online_softmax", "online_softmax", "axis", 0, -2,
      lambda v: jn.online_softmax(RECT, axis=v), maximum=1),
    # jaxnum.optim
    O("jn.scale_by_lbfgs", "scale_by_lbfgs", "memory_size", 2, 1,
      lambda v: jn.scale_by_lbfgs(memory_size=v).init(X3), run="equal"),
    O("jn.lbfgs", "scale_by_lbfgs", "memory_size", 2, 1,
      lambda v: jn.lbfgs(memory_size=v).init(X3), run="accept"),
    O("jn.scale_by_newton_cg", "scale_by_newton_cg", "max_cg_iterations", 2, 1,
      lambda v: jn.scale_by_newton_cg(max_cg_iterations=v), run="accept"),
    O("jn.scale_by_newton_cg", "scale_by_newton_cg", "max_backtracks", 1, 0,
      lambda v: jn.scale_by_newton_cg(max_backtracks=v), run="accept"),
    O("jn.scale_by_strong_wolfe", "scale_by_strong_wolfe", "max_evaluations", 3, 1,
      lambda v: jn.scale_by_strong_wolfe(max_evaluations=v), run="accept"),
    O("jn.optim.strong_wolfe_search", "strong_wolfe_search", "max_evaluations", 3, 1,
      lambda v: jn.optim.strong_wolfe_search(
          lambda x: ((_quad(x), None), 2 * x), X3, -X3, 1.0, 2 * X3, max_evaluations=v)),
    O("jn.minimize", "minimize", "maxiter", 2, 1, lambda v: jn.minimize(_quad, X3, maxiter=v)),
    O("jn.minimize", "minimize", "memory_size", 2, 1,
      lambda v: jn.minimize(_quad, X3, options={"memory_size": v})),
    O("jn.minimize", "minimize", "max_evaluations", 3, 1,
      lambda v: jn.minimize(_quad, X3, options={"max_evaluations": v})),
    O("jn.minimize", "minimize", "max_cg_iterations", 2, 1,
      lambda v: jn.minimize(_quad, X3, method="newton-cg", options={"max_cg_iterations": v})),
    O("jn.optim.gauss_newton", "gauss_newton", "maxiter", 2, 1,
      lambda v: jn.optim.gauss_newton(lambda x: x**2 - 2.0, X3, maxiter=v)),
    O("jn.optim.newton_root", "newton_root", "maxiter", 2, 1,
      lambda v: jn.optim.newton_root(lambda x: x**2 - 2.0, X3, maxiter=v)),
    O("jn.optim.newton_root", "newton_root", "multiplicity", 2, 1,
      lambda v: jn.optim.newton_root(lambda x: x**2, X3, multiplicity=v)),
    O("jn.optim.newton_root", "newton_root", "max_backtracks", 1, 0,
      lambda v: jn.optim.newton_root(lambda x: x**2 - 2.0, X3, max_backtracks=v)),
    # jaxnum.linalg
    O("jn.linalg.cg", "cg", "maxiter", 2, 0, lambda v: jn.linalg.cg(SPD, SPD[0], maxiter=v)),
    O("jn.linalg.lanczos", "lanczos", "num_iters", 2, 1,
      lambda v: jn.linalg.lanczos(SPD, SPD[0], v), maximum=4),
    O("jn.linalg.top_eigenvalues", "top_eigenvalues", "k", 2, 1,
      lambda v: jn.linalg.top_eigenvalues(SPD, v, key=KEY), maximum=4),
    O("jn.linalg.top_eigenvalues", "top_eigenvalues", "num_iters", 3, 2,
      lambda v: jn.linalg.top_eigenvalues(SPD, 2, key=KEY, num_iters=v), maximum=4),
    O("jn.linalg.top_eigenvalues", "top_eigenvalues", "n", 4, 1,
      lambda v: jn.linalg.top_eigenvalues(_matvec, 2, key=KEY, n=v)),
    O("jn.linalg.spectral_density", "spectral_density", "num_probes", 2, 1,
      lambda v: jn.linalg.spectral_density(SPD, key=KEY, num_probes=v, num_iters=3)),
    O("jn.linalg.spectral_density", "spectral_density", "num_iters", 3, 1,
      lambda v: jn.linalg.spectral_density(SPD, key=KEY, num_probes=1, num_iters=v),
      maximum=4),
    O("jn.linalg.spectral_density", "spectral_density", "n", 4, 1,
      lambda v: jn.linalg.spectral_density(_matvec, key=KEY, num_probes=1, num_iters=3, n=v)),
    O("jn.linalg.spectral_density", "spectral_density", "num_points", 8, 1,
      lambda v: jn.linalg.spectral_density(SPD, key=KEY, num_probes=1, num_iters=3,
                                           num_points=v)),
    O("jn.linalg.randomized_range_finder", "randomized_range_finder", "size", 2, 1,
      lambda v: jn.linalg.randomized_range_finder(RECT, v, key=KEY, power_iters=1)),
    O("jn.linalg.randomized_range_finder", "randomized_range_finder", "power_iters", 1, 0,
      lambda v: jn.linalg.randomized_range_finder(RECT, 2, key=KEY, power_iters=v)),
    O("jn.linalg.randomized_svd", "randomized_svd", "rank", 2, 1,
      lambda v: jn.linalg.randomized_svd(RECT, v, key=KEY, oversample=1, power_iters=1),
      run="equal"),
    O("jn.linalg.randomized_svd", "randomized_svd", "oversample", 1, 0,
      lambda v: jn.linalg.randomized_svd(RECT, 2, key=KEY, oversample=v)),
    O("jn.linalg.randomized_svd", "randomized_svd", "power_iters", 1, 0,
      lambda v: jn.linalg.randomized_svd(RECT, 2, key=KEY, power_iters=v)),
    O("jn.linalg.randomized_eigh", "randomized_eigh", "rank", 2, 1,
      lambda v: jn.linalg.randomized_eigh(SPD, v, key=KEY)),
    O("jn.linalg.randomized_eigh", "randomized_eigh", "oversample", 1, 0,
      lambda v: jn.linalg.randomized_eigh(SPD, 2, key=KEY, oversample=v)),
    # jaxnum.autodiff
    O("jn.autodiff.trace_estimate", "trace_estimate", "num_samples", 3, 1,
      lambda v: jn.autodiff.trace_estimate(_matvec, SPD[0], key=KEY, num_samples=v,
                                           method="hutchinson"), run="equal"),
    O("jn.autodiff.trace_estimate", "trace_estimate", "chunk_size", 2, 1,
      lambda v: jn.autodiff.trace_estimate(_matvec, SPD[0], key=KEY, num_samples=4,
                                           method="hutchinson", chunk_size=v)),
    O("jn.autodiff.hessian_trace", "hessian_trace", "num_samples", 3, 1,
      lambda v: jn.autodiff.hessian_trace(_quad, X3, key=KEY, num_samples=v,
                                          method="hutchinson")),
    O("jn.autodiff.hessian_trace", "hessian_trace", "chunk_size", 2, 1,
      lambda v: jn.autodiff.hessian_trace(_quad, X3, key=KEY, num_samples=4, chunk_size=v)),
    O("jn.autodiff.hessian_diag", "hessian_diag", "num_samples", 2, 1,
      lambda v: jn.autodiff.hessian_diag(_quad, X3, key=KEY, num_samples=v)),
    O("jn.autodiff.hessian_diag", "hessian_diag", "chunk_size", 2, 1,
      lambda v: jn.autodiff.hessian_diag(_quad, X3, key=KEY, num_samples=2, chunk_size=v)),
    O("jn.autodiff.diagonal_estimate", "diagonal_estimate", "num_samples", 2, 1,
      lambda v: jn.autodiff.diagonal_estimate(_matvec, SPD[0], key=KEY, num_samples=v)),
    O("jn.autodiff.diagonal_estimate", "diagonal_estimate", "chunk_size", 1, 1,
      lambda v: jn.autodiff.diagonal_estimate(_matvec, SPD[0], key=KEY, num_samples=2,
                                              chunk_size=v)),
    O("jn.autodiff.gradcheck", "gradcheck", "order", 1, 1,
      lambda v: jn.autodiff.gradcheck(_quad, X3, order=v), maximum=2),
    O("jn.autodiff.gradcheck", "gradcheck", "num_probes", 1, 1,
      lambda v: jn.autodiff.gradcheck(_quad, X3, num_probes=v)),
    O("jn.autodiff.gradcheck", "gradcheck", "argnum", 0, 0,
      lambda v: jn.autodiff.gradcheck(_quad, X3, argnum=v)),
    O("jn.autodiff.taylor_test", "taylor_test", "num_steps", 4, 3,
      lambda v: jn.autodiff.taylor_test(_quad, X3, num_steps=v)),
    # jaxnum.lora
    O("jn.lora.init_from_svd", "init_from_svd", "rank", 2, 1,
      lambda v: jn.lora.init_from_svd(RECT, v), maximum=3),
    O("jn.lora.split", "init_from_svd", "rank", 1, 1,
      lambda v: jn.lora.split({"dense": {"kernel": RECT}}, v)),
    # jaxnum.kron
    *[
        O(f"jn.{name}", fn, arg, good, minimum, functools.partial(
            lambda v, factory, arg: factory(**{arg: v}), factory=factory, arg=arg),
          run="accept")
        for name, fn, factory in (
            ("scale_by_shampoo", "scale_by_shampoo", jn.scale_by_shampoo),
            ("shampoo", "scale_by_shampoo", functools.partial(jn.shampoo, 0.1)),
            ("scale_by_soap", "scale_by_soap", jn.scale_by_soap),
            ("soap", "scale_by_soap", functools.partial(jn.soap, 0.1)),
        )
        for arg, good, minimum in (("precondition_every", 3, 1), ("block_size", 4, 2))
    ],
    # jaxnum.kfac
    O("jn.kfac.scale_by_kfac", "scale_by_kfac", "inverse_every", 2, 1,
      lambda v: kfac.scale_by_kfac(inverse_every=v), run="accept"),
    O("jn.kfac.optimizer", "scale_by_kfac", "inverse_every", 2, 1,
      lambda v: kfac.optimizer(0.1, inverse_every=v), run="accept"),
    O("jn.kfac.scale_by_ekfac", "scale_by_ekfac", "eigenbasis_every", 2, 1,
      lambda v: kfac.scale_by_ekfac(eigenbasis_every=v), run="accept"),
    O("jn.kfac.ekfac", "scale_by_ekfac", "eigenbasis_every", 2, 1,
      lambda v: kfac.ekfac(0.1, eigenbasis_every=v), run="accept"),
    O("jn.kfac.adaptive_optimizer", "kfac.adaptive_optimizer", "inverse_every", 1, 1,
      lambda v: kfac.adaptive_optimizer(inverse_every=v), run="accept"),
    O("jn.kfac.adaptive_optimizer", "kfac.adaptive_optimizer", "adapt_damping_every", 1, 1,
      lambda v: kfac.adaptive_optimizer(adapt_damping_every=v), run="accept"),
    O("jn.kfac.fisher_gram_fn", "fisher_gram_fn", "examples", 3, 1,
      lambda v: kfac.fisher_gram_fn(_MLP(), "squared_error", KFAC_PARAMS, jnp.ones((6, 2)),
                                    key=KEY, examples=v)),
    O("jn.kfac.value_grad_and_stats", "value_grad_and_stats", "curvature_batch", 3, 1,
      lambda v: kfac.value_grad_and_stats(_MLP(), "squared_error", curvature_batch=v),
      run="accept"),
    O("jn.kfac.nnx.value_grad_and_stats", "kfac.nnx.value_grad_and_stats", "curvature_batch",
      3, 1, lambda v: kfac.nnx.value_grad_and_stats("squared_error", curvature_batch=v),
      run="accept"),
]  # fmt: skip


def _same(a, b) -> bool:
    """Same tree structure and, leaf by leaf, the same values (bit for bit)."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    if jax.tree.structure(a) != jax.tree.structure(b):
        return False
    for x, y in zip(la, lb, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        if x.dtype != y.dtype or not np.array_equal(x, y, equal_nan=x.dtype.kind in "fc"):
            return False
    return True


@pytest.mark.parametrize("opt", OPTIONS, ids=[f"{o.function}:{o.arg}" for o in OPTIONS])
@pytest.mark.slow
def test_an_integer_option_takes_numpy_ints_and_refuses_other_types(opt):
    if opt.run == "equal":  # the reference: the same call with the Python int
        assert _same(opt.call(np.int64(opt.good)), opt.call(opt.good))
    elif opt.run == "accept":
        opt.call(np.int64(opt.good))
    wanted = rf"{re.escape(opt.fn)}: {opt.arg} must be a Python int "
    for bad in (float(opt.good), True, str(opt.good)):
        with pytest.raises(TypeError, match=wanted + r".*, got " + re.escape(repr(bad))):
            opt.call(bad)
    with pytest.raises(TypeError, match=wanted + r".*got a jax array.*static_args=\('"):
        opt.call(jnp.asarray(opt.good))
    below = rf"{wanted}(>= {opt.minimum}|in {opt.minimum}\.\.).*, got {opt.minimum - 1}$"
    with pytest.raises(ValueError, match=below):
        opt.call(opt.minimum - 1)
    if opt.maximum is not None:
        with pytest.raises(ValueError, match=rf"{wanted}in {opt.minimum}\.\.{opt.maximum}"):
            opt.call(opt.maximum + 1)


# Integer parameters that are not options checked here: layer constructors (flax's own
# fields), an operator's shape, loss_scaling's growth_interval (its own test below: an
# integer array works there, it is only compared with) and online_logsumexp's axis
# (the same check as online_softmax's).
NOT_IN_TABLE = {
    ("jaxnum.linalg.LinearOperator", "shape"),
    ("jaxnum.loss_scaling", "growth_interval"),
    ("jaxnum.online_logsumexp", "axis"),
} | {
    (f"jaxnum.kfac{sub}.{layer}", arg)
    for sub in ("", ".nnx")
    for layer in ("Dense", "Conv", "Linear")
    for arg in ("features", "kernel_size", "strides", "in_features", "out_features",
                "input_dilation", "kernel_dilation", "feature_group_count")
}  # fmt: skip


def _integer_parameters():
    """(public name, parameter) of every int-typed parameter of the public API."""
    modules = (jn, jn.precision, jn.autodiff, jn.linalg, jn.lora, jn.optim, kfac, kfac.nnx)
    found = set()
    for module in modules:
        for name in module.__all__:
            obj = getattr(module, name)
            target = obj.__init__ if inspect.isclass(obj) else obj
            if not callable(target):
                continue
            try:
                parameters = inspect.signature(target).parameters.values()
            except (TypeError, ValueError):
                continue
            for p in parameters:
                annotation = str(p.annotation)
                if type(p.default) is int or re.search(r"\bint\b", annotation):
                    found.add((f"{module.__name__}.{name}", p.name))
    return found


def test_the_table_covers_every_integer_option_of_the_public_api():
    def short(pairs):  # jn.minimize is jaxnum.optim.minimize: compare by the last name
        return {(name.rsplit(".", 1)[-1], arg) for name, arg in pairs}

    covered = short((o.function, o.arg) for o in OPTIONS) | short(NOT_IN_TABLE)
    missing = short(_integer_parameters()) - covered
    assert not missing, sorted(missing)


# factory, its integer options, params; the error names the first option it checks.
INJECTED = {
    "scale_by_lbfgs": (jn.scale_by_lbfgs, {"memory_size": 3}, X3),
    "scale_by_newton_cg": (
        jn.scale_by_newton_cg,
        {"max_cg_iterations": 4, "max_backtracks": 1},
        X3,
    ),
    "scale_by_strong_wolfe": (jn.scale_by_strong_wolfe, {"max_evaluations": 5}, X3),
    "scale_by_kfac": (kfac.scale_by_kfac, {"inverse_every": 2}, KFAC_PARAMS),
    "kfac.optimizer": (functools.partial(kfac.optimizer, 0.1), {"inverse_every": 2}, KFAC_PARAMS),
    "scale_by_ekfac": (kfac.scale_by_ekfac, {"eigenbasis_every": 2}, KFAC_PARAMS),
    "ekfac": (functools.partial(kfac.ekfac, 0.1), {"eigenbasis_every": 2}, KFAC_PARAMS),
    "shampoo": (
        functools.partial(jn.shampoo, 0.1),
        {"precondition_every": 2, "block_size": 4},
        RECT,
    ),
    "soap": (functools.partial(jn.soap, 0.1), {"precondition_every": 2, "block_size": 4}, RECT),
}


@pytest.mark.parametrize("name", list(INJECTED))
def test_inject_hyperparams_names_static_args_for_an_integer_option(name):
    factory, kwargs, params = INJECTED[name]
    args = "|".join(kwargs)
    with pytest.raises(TypeError, match=rf"({args}) must be a Python int .*got a jax array.*"
                       rf"sizes are static: under optax.inject_hyperparams pass it in "
                       rf"static_args=\('\1',\)"):  # fmt: skip
        optax.inject_hyperparams(factory)(**kwargs).init(params)
    # With the options in static_args it works: the plain transformation's state (K-FAC's
    # optimizer chains other transformations when its float options are arrays).
    injected = optax.inject_hyperparams(factory, static_args=tuple(kwargs))(**kwargs)
    state = injected.init(params)
    if name not in ("kfac.optimizer", "ekfac", "shampoo", "soap"):  # chains: their states differ
        assert _same(state.inner_state, factory(**kwargs).init(params))


def test_loss_scaling_under_inject_hyperparams_with_growth_interval_static():
    # optax's reference: inject_hyperparams(loss_scaling) with growth_interval in
    # static_args equals loss_scaling; a numpy int gives the same run too.
    def run(tx):
        params = jnp.array([1.0, 2.0])
        state = tx.init(params)
        out = []
        for g in ([1.0, 1.0], [jnp.inf, 1.0], [1.0, 1.0], [1.0, 1.0]):
            updates, state = tx.update(jnp.array(g), state, params)
            out.append((updates, jn.current_loss_scale(state)))
        return out

    plain = run(jn.loss_scaling(optax.sgd(0.1), initial_scale=8.0, growth_interval=2))
    injected = optax.inject_hyperparams(jn.loss_scaling, static_args=("growth_interval",))(
        optax.sgd(0.1), initial_scale=8.0, growth_interval=2
    )
    assert _same(run(injected), plain)
    assert [float(s) for _, s in plain] == [8.0, 4.0, 4.0, 8.0]  # grows after 2 finite steps
    numpy = jn.loss_scaling(optax.sgd(0.1), initial_scale=8.0, growth_interval=np.int64(2))
    assert _same(run(numpy), plain)
    for bad, error in ((2.0, TypeError), (True, TypeError), (0, ValueError)):
        with pytest.raises(error, match=r"loss_scaling: growth_interval must be "):
            jn.loss_scaling(optax.sgd(0.1), growth_interval=bad)
