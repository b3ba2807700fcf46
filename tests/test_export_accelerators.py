"""Accelerator readiness without an accelerator: the public routines lower for GPU and TPU."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import pytest

import jaxnum as jn
from jaxnum import autodiff, kfac, linalg, lora, optim
from jaxnum.autodiff import gnvp_fn, hessian_trace, hvp
from jaxnum.kfac import KroneckerFactors
from jaxnum.kfac import _factors as kfac_factors
from jaxnum.linalg import cg, lstsq, randomized_eigh, randomized_svd, spectral_density

A = jnp.eye(12) + 0.1 * jnp.ones((12, 12))
X = jnp.ones((12, 4)) + jnp.eye(12, 4)


FD_METHODS = ("forward", "central", "richardson", "complex")
# Host-side analysis tools, not traced programs, so not exported: gradcheck, taylor_test
# (float64 checks that return Python reports), convergence_order (a numpy fit),
# first_nonfinite (evaluates op by op), float_formats, lora.count (shapes).


class _MLPModule(nn.Module):
    @nn.compact
    def __call__(self, x):
        return kfac.Dense(3, name="out")(jnp.tanh(kfac.Dense(6, name="hidden")(x)))


_MLP = _MLPModule()


def _loss(w):
    return jnp.sum(jnp.tanh(X @ w) ** 2)


CASES = {
    "loss_scaling+clip update": (
        lambda g, p: (lambda tx: tx.update(g, tx.init(p), p))(
            jn.loss_scaling(optax.chain(jn.clip_by_global_norm(1.0), optax.adam(1e-3)))
        ),
        (jnp.ones(4), jnp.ones(4)),
    ),
    "shampoo update (eigh roots)": (
        lambda g, p: (lambda tx: tx.update(g, tx.init(p), p))(jn.shampoo(1e-3)),
        ({"w": jnp.ones((6, 4)), "b": jnp.ones(4)}, {"w": jnp.ones((6, 4)), "b": jnp.ones(4)}),
    ),
    "soap two updates (eigh, then power step and QR)": (
        lambda g, p: (
            lambda tx: tx.update(g, tx.update(g, tx.init(p), p)[1]._replace(count=jnp.array(10)), p)
        )(jn.scale_by_soap()),
        (jnp.ones((6, 4)), jnp.ones((6, 4))),
    ),
    "matrix_inverse_root": (lambda a: linalg.matrix_inverse_root(a, 3, eps=1e-6), (A,)),
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
    "ekfac statistics and update (eigh, per-example rows of a conv)": (
        lambda x, w: (
            lambda fn, tx, p: tx.update(
                *fn(p, x, jnp.arange(4) % 3, jax.random.key(0))[1:2],
                tx.init(p),
                p,
                curvature=fn(p, x, jnp.arange(4) % 3, jax.random.key(0))[2],
            )
        )(
            jn.kfac.value_grad_and_stats(
                lambda p, x: jn.kfac.conv(x, p["c"]["kernel"], layer="c").sum((1, 2)),
                "softmax_cross_entropy",
                per_example=True,
            ),
            jn.kfac.ekfac(0.1),
            {"c": {"kernel": w}},
        ),
        (jnp.ones((4, 5, 5, 2)), jnp.ones((3, 3, 2, 3))),
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
            jn.kfac.adaptive_optimizer(),
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


KEY = jax.random.key(0)
_F = KroneckerFactors(jnp.eye(5) + 0.1, jnp.eye(3) + 0.2)  # A: (d_in + 1) x (d_in + 1), G: d_out

# The rest of the public routines: precision, autodiff, linalg, lora, optim and kfac pieces.
CASES.update(
    {
        "global_norm, all_finite, fractions": (
            lambda g: (
                jn.global_norm(g),
                jn.all_finite(g),
                jn.underflow_fraction(g, jnp.float16),
                jn.overflow_fraction(g, jnp.bfloat16),
            ),
            ({"w": jnp.ones(5, jnp.float16), "b": jnp.ones(3)},),
        ),
        "clip_by_global_norm update": (
            lambda g: (lambda tx: tx.update(g, tx.init(g), g))(jn.clip_by_global_norm(1.0)),
            ({"w": jnp.ones(5, jnp.float16)},),
        ),
        "scaled_value_and_grad": (
            lambda w: (lambda tx: jn.scaled_value_and_grad(_loss)(tx.init(w), w))(
                jn.loss_scaling(optax.sgd(0.1))
            ),
            (jnp.ones(4),),
        ),
        "online_logsumexp": (lambda x: jn.online_logsumexp(x, block_size=4), (jnp.ones((3, 10)),)),
        "policy cast": (
            lambda p: jn.Policy.parse("params=float32,compute=bfloat16").cast_to_compute(p),
            ({"w": jnp.ones(3), "step": jnp.int32(1)},),
        ),
        "hvp rev-rev, rev-fwd, hvp_fn": (
            lambda w, v: (
                hvp(_loss, w, v, mode="rev-rev"),
                hvp(_loss, w, v, mode="rev-fwd"),
                autodiff.hvp_fn(_loss, w)(v),
            ),
            (jnp.ones(4), jnp.ones(4)),
        ),
        "hessian_trace hutchinson, hutch++; hessian_diag": (
            lambda w: (
                hessian_trace(_loss, w, key=KEY, num_samples=4, method="hutchinson").value,
                hessian_trace(_loss, w, key=KEY, num_samples=6, method="hutch++").value,
                autodiff.hessian_diag(_loss, w, key=KEY, num_samples=4, chunk_size=2),
            ),
            (jnp.ones(4),),
        ),
        "derivative (all methods), fd_error_curve": (
            lambda w: (
                [autodiff.derivative(_loss, w, jnp.ones(4), method=m) for m in FD_METHODS],
                autodiff.fd_error_curve(_loss, w, jnp.array([1e-2, 1e-3]), v=jnp.ones(4)).error,
            ),
            (jnp.ones(4),),
        ),
        "randomized_range_finder, randomized_svd on a stack": (
            lambda a: (
                linalg.randomized_range_finder(a, 4, key=KEY, normalizer="qr"),
                randomized_svd(jnp.stack([a, 2 * a]), 3, key=KEY),
            ),
            (A,),
        ),
        "randomized_svd of a jacobian_operator": (
            lambda w: randomized_svd(
                linalg.jacobian_operator(lambda v: jnp.tanh(X @ v), w), 2, key=KEY
            ),
            (jnp.ones(4),),
        ),
        "lstsq normal, cholesky, svd; condition_number": (
            lambda x, y: (
                [lstsq(x, y, method=m, ridge=0.1) for m in ("normal", "cholesky", "svd")]
                + [linalg.condition_number(x)]
            ),
            (X, jnp.ones(12)),
        ),
        "lanczos, top_eigenvalues on a hessian_operator": (
            lambda w: (
                linalg.lanczos(A, jnp.ones(12), 5).alphas,
                linalg.top_eigenvalues(linalg.hessian_operator(_loss, w), 2, key=KEY),
            ),
            (jnp.ones(4),),
        ),
        "lora init_from_svd, split, merge": (
            lambda w: (lambda frozen_adapters: lora.merge(*frozen_adapters))(
                lora.split({"dense": {"kernel": w}}, 2, key=KEY)
            ),
            (X,),
        ),
        "scale_by_lbfgs + scale_by_strong_wolfe, has_aux": (
            lambda w: (
                lambda tx: tx.update(
                    jax.grad(_loss)(w),
                    tx.init(w),
                    w,
                    value=_loss(w),
                    grad=jax.grad(_loss)(w),
                    value_fn=lambda p: (_loss(p), p[0]),
                )
            )(
                optax.chain(
                    jn.scale_by_lbfgs(5),
                    optax.scale(-1.0),
                    jn.scale_by_strong_wolfe(has_aux=True, aux_init=jnp.float32(0.0)),
                )
            ),
            (jnp.ones(4),),
        ),
        "scale_by_newton_cg, truncated CG (the shared pytree CG)": (
            lambda w: (
                lambda tx: tx.update(
                    jax.grad(_loss)(w), tx.init(w), w, value=_loss(w), value_fn=_loss
                )
            )(jn.scale_by_newton_cg(max_cg_iterations=4)),
            (jnp.ones(4),),
        ),
        "minimize newton-cg dense solver via scale_by_newton_cg": (
            lambda w: (
                lambda tx: tx.update(
                    jax.grad(_loss)(w), tx.init(w), w, value=_loss(w), value_fn=_loss
                )
            )(jn.scale_by_newton_cg(linear_solver="dense", max_backtracks=2)),
            (jnp.ones(4),),
        ),
        "gauss_newton gn": (
            lambda w: optim.gauss_newton(lambda p: jnp.tanh(X @ p) - 0.5, w, method="gn").x,
            (jnp.ones(4),),
        ),
        "kfac factors: dense_factors, moving average, damping, precondition": (
            lambda x, g, w: kfac_factors.kronecker_precondition(
                w,
                kfac_factors.factored_damping(
                    kfac_factors.update_moving_average(_F, kfac_factors.dense_factors(x, g), 0.9),
                    1e-3,
                ),
            ),
            (jnp.ones((8, 4)), jnp.ones((8, 3)), jnp.ones((5, 3))),
        ),
        "kfac.optimizer (momentum, KL clip) update": (
            lambda x, y: (
                lambda tx, p: (lambda v, g, stats: tx.update(g, tx.init(p), p, curvature=stats))(
                    *kfac.value_grad_and_stats(_MLP, "squared_error")(p, x, y, KEY)
                )
            )(kfac.optimizer(0.1), _MLP.init(KEY, x)["params"]),
            (jnp.ones((8, 4)), jnp.ones((8, 3))),
        ),
    }
)


@pytest.mark.parametrize("name", sorted(CASES))
def test_lowers_for_cuda_and_tpu(name):
    fn, args = CASES[name]
    exported = jax.export.export(jax.jit(fn), platforms=("cuda", "tpu"))(*args)
    assert exported.platforms == ("cuda", "tpu")
