"""A physics-informed network trained by Adam, then refined by jaxnum's L-BFGS.

Problem: -u''(x) = f(x) on [0, 1], u(0) = u(1) = 0, with the exact solution
u(x) = sin(pi x) + 0.1 sin(4 pi x), so f(x) = pi^2 sin(pi x) + 1.6 pi^2 sin(4 pi x).
A 1-32-32-1 tanh network u_theta is fitted by minimising the mean squared PDE
residual at collocation points plus a boundary penalty (Raissi, Perdikaris,
Karniadakis 2019). Adam gets the network into the right basin; full-batch
L-BFGS (one jitted while_loop) then drives the residual down by orders of
magnitude, the usual recipe for PINNs. Printed after each phase: the loss and
the error against the exact solution on a fine grid.

Float64 (enabled below) because the refinement is limited by float32
rounding of u'' long before L-BFGS stops making progress.
"""

import functools

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from jaxnum.optim import minimize  # noqa: E402

PI = jnp.pi


def exact(x):
    return jnp.sin(PI * x) + 0.1 * jnp.sin(4 * PI * x)


def source(x):  # f = -u''
    return PI**2 * jnp.sin(PI * x) + 1.6 * PI**2 * jnp.sin(4 * PI * x)


def init_mlp(key, sizes=(1, 32, 32, 1)):
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {"w": jax.random.normal(k, (m, n)) * jnp.sqrt(1.0 / m), "b": jnp.zeros(n)}
        for k, m, n in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]


def u(params, x):  # scalar x -> scalar u
    h = jnp.array([x])
    for layer in params[:-1]:
        h = jnp.tanh(h @ layer["w"] + layer["b"])
    return (h @ params[-1]["w"] + params[-1]["b"])[0]


def loss(params, xs):
    u_xx = jax.vmap(jax.grad(jax.grad(u, argnums=1), argnums=1), (None, 0))(params, xs)
    residual = -u_xx - source(xs)
    boundary = u(params, 0.0) ** 2 + u(params, 1.0) ** 2
    return jnp.mean(residual**2) + 100.0 * boundary


def errors(params):
    grid = jnp.linspace(0.0, 1.0, 1001)
    diff = jax.vmap(u, (None, 0))(params, grid) - exact(grid)
    return jnp.linalg.norm(diff) / jnp.linalg.norm(exact(grid)), jnp.max(jnp.abs(diff))


@functools.partial(jax.jit, static_argnums=2)
def adam_phase(params, xs, steps=3000):
    opt = optax.adam(1e-3)

    def step(carry, _):
        p, s = carry
        grads = jax.grad(loss)(p, xs)
        updates, s = opt.update(grads, s, p)
        return (optax.apply_updates(p, updates), s), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
    return params


def report(phase, params, xs, extra=""):
    rel, worst = errors(params)
    print(
        f"{phase:6s} loss {float(loss(params, xs)):.3e}  rel L2 error {float(rel):.3e}  "
        f"max error {float(worst):.3e}{extra}"
    )


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adam-steps", type=int, default=3000, help="Adam steps (3000)")
    parser.add_argument("--quick", action="store_true", help="1000 Adam steps")
    args = parser.parse_args()
    xs = jnp.linspace(0.0, 1.0, 128)
    steps = 1000 if args.quick else args.adam_steps
    params = adam_phase(init_mlp(jax.random.key(0)), xs, steps)
    report("adam", params, xs)
    result = minimize(loss, params, xs, tol=1e-8, maxiter=3000)
    report(
        "lbfgs",
        result.x,
        xs,
        f"  ({int(result.nit)} iterations, {int(result.nfev)} evaluations: {result.message})",
    )
