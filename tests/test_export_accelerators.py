"""Accelerator readiness without an accelerator: the public routines lower for GPU and TPU."""

import jax
import jax.numpy as jnp
import optax
import pytest

import jaxnum as jn
from jaxnum.autodiff import gnvp_fn, hessian_trace, hvp
from jaxnum.linalg import cg, lstsq, randomized_eigh, randomized_svd, spectral_density

A = jnp.eye(12) + 0.1 * jnp.ones((12, 12))
X = jnp.ones((12, 4)) + jnp.eye(12, 4)


def _loss(w):
    return jnp.sum(jnp.tanh(X @ w) ** 2)


CASES = {
    "loss_scaling+clip update": (
        lambda g, p: (lambda tx: tx.update(g, tx.init(p), p))(
            jn.loss_scaling(optax.chain(jn.clip_by_global_norm(1.0), optax.adam(1e-3)))
        ),
        (jnp.ones(4), jnp.ones(4)),
    ),
    "online_softmax": (lambda x: jn.online_softmax(x, block_size=4), (jnp.ones((3, 10)),)),
    "nonfinite_report": (jn.nonfinite_report, ({"w": jnp.ones(3)},)),
    "hvp": (lambda w, v: hvp(_loss, w, v), (jnp.ones(4), jnp.ones(4))),
    "gnvp": (
        lambda w, v: gnvp_fn(
            lambda p, x: x @ p, lambda o, t: jnp.sum((o - t) ** 2), w, X, jnp.zeros(12)
        )(v),
        (jnp.ones(4), jnp.ones(4)),
    ),
    "hessian_trace xtrace": (
        lambda w: (
            hessian_trace(_loss, w, key=jax.random.key(0), num_samples=4, method="xtrace").value
        ),
        (jnp.ones(4),),
    ),
    "randomized_svd": (lambda a: randomized_svd(a, 3, key=jax.random.key(0)), (A,)),
    "randomized_eigh": (lambda a: randomized_eigh(a, 3, key=jax.random.key(0)), (A,)),
    "lstsq qr": (lambda x, y: lstsq(x, y, method="qr"), (X, jnp.ones(12))),
    "cg": (lambda a, b: cg(a, b).x, (A, jnp.ones(12))),
    "minimize lbfgs": (lambda w: jn.minimize(_loss, w, maxiter=5).x, (jnp.ones(4),)),
    "lbfgs update": (
        lambda w: (
            lambda tx: tx.update(
                jax.grad(_loss)(w),
                tx.init(w),
                w,
                value=_loss(w),
                grad=jax.grad(_loss)(w),
                value_fn=_loss,
            )
        )(jn.lbfgs()),
        (jnp.ones(4),),
    ),
    "scale_by_kfac update": (
        lambda g: (
            lambda tx, p: tx.update(
                p,
                tx.init(p),
                p,
                curvature={("l",): jn.kfac.KroneckerFactors(jnp.eye(5), jnp.eye(3))},
            )
        )(jn.kfac.scale_by_kfac(), {"l": {"kernel": g, "bias": jnp.ones(3)}}),
        (jnp.ones((4, 3)),),
    ),
    "kfac value_grad_and_stats (conv, plain function)": (
        lambda x, w: jn.kfac.value_grad_and_stats(
            lambda p, x: jn.kfac.conv(x, p["c"]["kernel"], layer="c").sum((1, 2)),
            "softmax_cross_entropy",
            curvature_batch=2,
        )({"c": {"kernel": w}}, x, jnp.arange(4) % 3, jax.random.key(0)),
        (jnp.ones((4, 5, 5, 2)), jnp.ones((3, 3, 2, 3))),
    ),
    "adaptive K-FAC update (quadratic model)": (
        lambda w, x: (
            lambda tx, p, fn: tx.update(
                p,
                tx.init(p),
                p,
                curvature={("l",): jn.kfac.KroneckerFactors(jnp.eye(4), jnp.eye(3))},
                fisher_gram=jn.kfac.fisher_gram_fn(fn, "squared_error", p, x),
                value=jnp.float32(1.0),
                value_fn=lambda q: jnp.sum(fn(q, x) ** 2),
            )
        )(
            jn.kfac.optimizer(None),
            {"l": {"kernel": w}},
            lambda p, x: jn.kfac.dense(x, p["l"]["kernel"], layer="l"),
        ),
        (jnp.ones((4, 3)), jnp.ones((5, 4))),
    ),
    "newton_root": (
        lambda x: jn.optim.newton_root(lambda v: jnp.stack([v[0] ** 2 - 2.0, v[1] - v[0]]), x).x,
        (jnp.ones(2),),
    ),
    "minimize newton-cg": (
        lambda w: jn.minimize(_loss, w, method="newton-cg", maxiter=3).x,
        (jnp.ones(4),),
    ),
    "minimize newton (dense)": (
        lambda w: jn.minimize(_loss, w, method="newton", maxiter=3).x,
        (jnp.ones(4),),
    ),
    "scale_by_newton_cg gauss-newton update": (
        lambda w: (
            lambda tx: tx.update(
                jax.grad(_loss)(w),
                tx.init(w),
                w,
                value=_loss(w),
                model_fn=lambda p: jnp.tanh(X @ p),
                loss_fn=lambda o: jnp.sum(o**2),
            )
        )(jn.scale_by_newton_cg(curvature="gauss-newton")),
        (jnp.ones(4),),
    ),
    "gauss_newton lm": (
        lambda w: jn.optim.gauss_newton(lambda p: jnp.tanh(X @ p) - 0.5, w, maxiter=3).x,
        (jnp.ones(4),),
    ),
    "spectral_density": (
        lambda a: spectral_density(a, key=jax.random.key(0), num_probes=2, num_iters=5).density,
        (A,),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_lowers_for_cuda_and_tpu(name):
    fn, args = CASES[name]
    exported = jax.export.export(jax.jit(fn), platforms=("cuda", "tpu"))(*args)
    assert exported.platforms == ("cuda", "tpu")
