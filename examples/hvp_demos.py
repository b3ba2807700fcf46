"""Second derivatives with JAX and jaxnum.autodiff: checked against closed forms and jax.hessian.

1. `jax.grad(jax.grad(f))` of a scalar function, f(x) = x^3 sin(x), against
   its second derivative worked out by hand, on a grid.
2. Hessian-vector products of a small MLP's loss, parameters as a pytree (a
   list of dicts), 369 of them: `jaxnum.autodiff.hvp` in its three modes
   (forward-over-reverse, reverse-over-reverse, reverse-over-forward) and
   `hvp_fn` (the gradient linearized once) against `jax.hessian` of the
   flattened loss times v.
3. `gnvp_fn`, the Gauss-Newton product J^T H_L J v, against the matrix built
   from `jax.jacobian` of the network's outputs; and the smallest eigenvalue
   of both matrices: the Hessian of a non-convex network is indefinite, the
   Gauss-Newton matrix positive semi-definite.
4. `hessian_trace` (Hutchinson and Hutch++, with a standard error from the
   spread of the probes) against the exact trace of the Hessian.
5. Cost as n grows, for the chained Rosenbrock function (cost of f O(n)):
   the explicit Hessian (`jax.hessian`, n forward-over-reverse passes and n^2
   numbers) against one HVP. All compiled, median of 5 runs after warm-up. A
   lone call of a compiled function costs ~10-30 us of dispatch, more than an
   HVP at these sizes, so the HVP is timed inside a compiled loop of 200
   power-iteration steps v <- Hv / ||Hv||, and the time per step printed.
   The growth exponents printed are fitted from the smallest to the largest
   n: the HVP's stays below 1 where fixed per-step costs still weigh, the
   Hessian's exceeds 2, likely as its n x n result (64 MB at n = 4000)
   outgrows the caches; so their ratio (in theory n) grows faster than n here.

Float32 throughout: the relative errors printed are rounding, about 1e-7 to
1e-6. The full timing study: `python -m jaxnum tour --only hvp_cost`.

Run: python examples/hvp_demos.py  (about 15 s on 2 CPU cores)
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxnum.autodiff import gnvp_fn, hessian_trace, hvp, hvp_fn

POWER_STEPS = 200


def rel_err(a, b):
    a, b = ravel_pytree(a)[0], ravel_pytree(b)[0]
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def second_derivative_demo():
    def f(x):
        return x**3 * jnp.sin(x)

    def f2_exact(x):  # (x^3 sin x)'' = 6x sin x + 6x^2 cos x - x^3 sin x
        return 6 * x * jnp.sin(x) + 6 * x**2 * jnp.cos(x) - x**3 * jnp.sin(x)

    xs = jnp.linspace(-3.0, 3.0, 61)
    d2 = jax.vmap(jax.grad(jax.grad(f)))(xs)
    err = float(jnp.max(jnp.abs(d2 - f2_exact(xs))) / jnp.max(jnp.abs(f2_exact(xs))))
    print("1. grad(grad(f)) for f(x) = x^3 sin x on 61 points in [-3, 3]")
    print(f"   max |AD - closed form| / max |f''| = {err:.1e}")


def init_mlp(key, sizes=(4, 16, 16, 1)):
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {"w": jax.random.normal(k, (m, n)) / jnp.sqrt(m), "b": jnp.zeros(n)}
        for k, m, n in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]


def mlp(params, x):
    for layer in params[:-1]:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def squared_error(outputs, targets):
    return 0.5 * jnp.mean(jnp.sum((outputs - targets) ** 2, axis=-1))


def loss(params, x, y):
    return squared_error(mlp(params, x), y)


def mlp_demos():
    kp, kx, kv, kt = jax.random.split(jax.random.key(0), 4)
    params = init_mlp(kp)
    x = jax.random.normal(kx, (64, 4))
    y = jnp.sin(x @ jnp.array([[1.0], [-2.0], [0.5], [1.5]]))
    flat, unravel = ravel_pytree(params)
    n = flat.size
    v = unravel(jax.random.normal(kv, (n,)))

    H = jax.jit(jax.hessian(lambda p: loss(unravel(p), x, y)))(flat)
    Hv = unravel(H @ ravel_pytree(v)[0])
    print(f"\n2. Hessian-vector products, 4-16-16-1 tanh MLP, {n} parameters in a pytree")
    print(f"   reference: jax.hessian of the flattened loss ({n}x{n}) times v")
    for mode in ("fwd-rev", "rev-rev", "rev-fwd"):
        err = rel_err(jax.jit(lambda p, v, m=mode: hvp(loss, p, v, x, y, mode=m))(params, v), Hv)
        print(f"   hvp mode={mode:8s} relative error {err:.1e}")
    print(
        f"   hvp_fn (linearized)  relative error {rel_err(hvp_fn(loss, params, x, y)(v), Hv):.1e}"
    )

    gv = gnvp_fn(mlp, squared_error, params, x, y)(v)
    J = jax.jit(jax.jacobian(lambda p: mlp(unravel(p), x).ravel()))(flat)  # (64 outputs, n)
    H_L = jax.hessian(lambda o: squared_error(o.reshape(y.shape), y))(mlp(params, x).ravel())
    G = J.T @ H_L @ J
    err = rel_err(gv, unravel(G @ ravel_pytree(v)[0]))
    print("\n3. Gauss-Newton product gnvp_fn vs J^T H_L J v (J from jax.jacobian)")
    print(f"   relative error {err:.1e}")
    print(
        f"   smallest eigenvalue: Hessian {np.linalg.eigvalsh(np.asarray(H, np.float64))[0]:.2e}, "
        f"Gauss-Newton {np.linalg.eigvalsh(np.asarray(G, np.float64))[0]:.2e} "
        "(PSD up to rounding)"
    )

    exact = float(jnp.trace(H))

    @jax.jit(static_argnums=(1, 2))
    def trace(params, num_samples, method):
        est = hessian_trace(loss, params, x, y, key=kt, num_samples=num_samples, method=method)
        return est.value, est.std_error

    print(f"\n4. trace of the Hessian: exact {exact:.5f}")
    for method in ("hutchinson", "hutch++"):
        for m in (30, 90):
            est = trace(params, m, method)
            value, std_error = float(est[0]), float(est[1])
            print(
                f"   {method:10s} {m:3d} HVPs: {value:.5f} +- {std_error:.5f} (std error), "
                f"actual error {abs(value - exact) / abs(exact):.1%}"
            )


def rosenbrock(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


@jax.jit
def power_iteration(x, v):
    """POWER_STEPS steps of v <- H v / ||H v||: one HVP each, in one compiled loop."""

    def step(_, v):
        w = hvp(rosenbrock, x, v)
        return w / jnp.linalg.norm(w)

    return jax.lax.fori_loop(0, POWER_STEPS, step, v)


def median_seconds(fn, *args, repeats=5):
    jax.block_until_ready(fn(*args))  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def cost_table(sizes):
    hessian = jax.jit(jax.hessian(rosenbrock))
    print("\n5. cost as n grows, chained Rosenbrock (float32, compiled, median of 5)")
    print("       n   explicit Hessian   one HVP    Hessian / HVP")
    rows = []
    for n in sizes:
        x = jnp.linspace(-1.0, 1.5, n)
        v = jax.random.normal(jax.random.key(n), (n,))
        t_hess = median_seconds(hessian, x)
        t_hvp = median_seconds(power_iteration, x, v) / POWER_STEPS
        rows.append((n, t_hess, t_hvp))
        print(
            f"   {n:5d}   {t_hess * 1e3:11.3f} ms   {t_hvp * 1e6:7.2f} us   {t_hess / t_hvp:9.0f}"
        )
    n, hess, hvp = (np.array(column, np.float64) for column in zip(*rows, strict=True))
    slope_hess = np.polyfit(np.log(n), np.log(hess), 1)[0]
    slope_hvp = np.polyfit(np.log(n), np.log(hvp), 1)[0]
    print(
        f"   growth exponent over n = {int(n[0])}..{int(n[-1])} (least squares): Hessian "
        f"{slope_hess:.2f} (theory 2), HVP {slope_hvp:.2f} (theory 1)"
    )
    print(
        f"   so: at n = {int(n[-1])} the explicit Hessian costs {hess[-1] / hvp[-1]:,.0f} HVPs; "
        "a method that needs H v products (CG, Lanczos) should never form H"
        + (
            "; exponents below theory mean the small sizes still pay fixed per-call costs"
            if slope_hess < 1.5 or slope_hvp < 0.75
            else ""
        )
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default="500,1000,2000,4000", help="n for the cost table (500,1000,2000,4000)"
    )
    parser.add_argument("--quick", action="store_true", help="sizes 250,500,1000,2000")
    args = parser.parse_args()
    if args.quick:
        args.sizes = "250,500,1000,2000"
    second_derivative_demo()
    mlp_demos()
    cost_table([int(n) for n in args.sizes.split(",")])


if __name__ == "__main__":
    main()
