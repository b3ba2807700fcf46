"""Data-parallel K-FAC: one jitted step, the batch split over a mesh of devices.

A 64-128-10 tanh classifier of scikit-learn's digits (1,437 training images,
360 held out) is trained by ``jaxnum.kfac.optimizer`` (true Fisher, factors
refreshed every 5 steps) on minibatches of 256. The same jitted training step
runs twice from the same start: on one device with the whole batch, and on a
mesh of all devices with the batch split over the "data" axis and the
parameters and optimizer state replicated. Nothing in the step changes: under
``jax.jit`` the compiler inserts the all-reduces, so the loss, the gradients
and the Kronecker factors (means over the batch) are the global batch's, and
one data-parallel step from a given state is the one-device step to rounding.
Printed: that one-step comparison (loss, parameters, K-FAC factors) in float32
and in float64 (in float32 the parameters differ by more than the factors: the
damped inverse of a nearly singular input factor amplifies the rounding), then
the loss of two 100-step float32 runs every 20 steps (their rounding
differences grow slowly, as between any two float32 runs that sum in different
orders) and their held-out accuracy.

Run as a script it simulates 2 CPU devices (``XLA_FLAGS=
--xla_force_host_platform_device_count=2``, set before jax is imported unless
you set a device count yourself); on a machine with accelerators it uses them.

Going multi-host
----------------
The step is already the multi-host one; three things change around it:

1. Every process calls, before any other JAX call::

       jax.distributed.initialize(coordinator_address="host0:1234",
                                  num_processes=N, process_id=i)

   (on Cloud TPU and under SLURM or Open MPI the arguments can be left out:
   JAX reads them from the environment). ``jax.devices()`` then lists the
   devices of all hosts, ``jax.local_devices()`` this host's, and the mesh
   below spans all of them.
2. Each host loads only its slice of the global batch (``process_rows``: the
   rows of this process, in the order of its devices on the mesh) and the
   global array is assembled without copying data between hosts:
   ``jax.make_array_from_process_local_data(sharding, local_rows)``. This
   example already builds its batches that way; with one process the local
   slice is the whole batch.
3. The same jitted step runs on every host (SPMD): same code, same random
   keys, same initial parameters (the same ``PRNGKey`` on every host). Values
   that are replicated (the loss, the parameters) can be read on any host;
   print from ``jax.process_index() == 0`` only.

The one-device comparison is for this demonstration only; a multi-host run
just calls ``train(mesh=...)``.
"""

import argparse
import os

# One OpenBLAS thread, and no more simulated devices than a small machine's cores:
# an all-reduce waiting for a simulated device whose thread is starved aborts the
# process after 40 s (XLA's collective timeout; seen with 4 devices on 2 cores).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
_FLAG = "--xla_force_host_platform_device_count"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}=2".strip()

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from jaxnum import kfac  # noqa: E402

BATCH = 256
STEPS = 100


class Classifier(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = jnp.tanh(kfac.Dense(128, name="hidden")(x))
        return kfac.Dense(10, name="logits")(h)


MODEL = Classifier()
TX = kfac.optimizer(0.2, damping=1e-2, decay=0.9, inverse_every=5)
STATS = kfac.value_grad_and_stats(MODEL, "softmax_cross_entropy")  # true Fisher


@jax.jit
def train_step(params, opt_state, x, y, key):
    """Loss, gradients and K-FAC statistics of the (global) batch, then the update."""
    loss, grads, stats = STATS(params, x, y, key)
    updates, opt_state = TX.update(grads, opt_state, params, curvature=stats)
    return optax.apply_updates(params, updates), opt_state, loss


def process_rows(batch_size: int) -> slice:
    """The rows of a global batch this process supplies (all of them with one process)."""
    per_process = batch_size // jax.process_count()
    start = jax.process_index() * per_process
    return slice(start, start + per_process)


def data():
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    order = np.random.default_rng(0).permutation(len(x))
    train, test = order[:1437], order[1437:]
    return (x[train], y[train]), (x[test], y[test])


def batches(x, y, steps):
    """The same sequence of random minibatches (host numpy arrays) on every host."""
    rng = np.random.default_rng(1)
    for _ in range(steps):
        rows = rng.choice(len(x), BATCH, replace=False)
        yield x[rows], y[rows]


def init(train_data):
    params = MODEL.init(jax.random.key(0), train_data[0][:1])["params"]
    return params, TX.init(params)


def replicate(mesh, tree):
    """Every device of the mesh holds the whole tree (parameters, optimizer state)."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def split_batch(mesh, x, y):
    """The global batch as arrays split over the "data" axis.

    Each process hands over its own rows only; with several hosts the global
    batch is never gathered in one place.
    """
    sharding = NamedSharding(mesh, P("data"))
    rows = process_rows(len(x))
    return tuple(jax.make_array_from_process_local_data(sharding, a[rows]) for a in (x, y))


def train(train_data, *, mesh=None, steps=STEPS):
    """``steps`` K-FAC steps; with ``mesh`` the batch is split over its "data" axis.

    Returns the final parameters and the loss of every step (a numpy array).
    """
    params, opt_state = init(train_data)
    if mesh is not None:
        params, opt_state = replicate(mesh, (params, opt_state))
    keys = jax.random.split(jax.random.key(1), steps)
    losses = []
    for key, (x, y) in zip(keys, batches(*train_data, steps), strict=True):
        if mesh is not None:
            x, y = split_batch(mesh, x, y)
        params, opt_state, loss = train_step(params, opt_state, x, y, key)
        losses.append(loss)
    return params, np.asarray(jax.device_get(losses))


def relative_gap(a, b) -> float:
    """Largest |a - b| over the leaves, relative to the leaf's largest |a|."""
    return max(
        float(jnp.max(jnp.abs(u - v)) / jnp.max(jnp.abs(u)))
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def one_step_gaps(mesh, train_data, dtype):
    """One step from the same state on the same batch, on one device and on the mesh.

    Returns the largest relative differences of the loss, the new parameters and
    the K-FAC factors; also checks that the new parameters are replicated.
    """
    params = jax.tree.map(lambda a: a.astype(dtype), init(train_data)[0])
    opt_state = TX.init(params)
    x, y = next(batches(*train_data, 1))
    x, key = x.astype(dtype), jax.random.key(2)
    one = train_step(params, opt_state, x, y, key)
    parallel = train_step(*replicate(mesh, (params, opt_state)), *split_batch(mesh, x, y), key)
    if not all(a.sharding.is_fully_replicated for a in jax.tree.leaves(parallel[0])):
        raise AssertionError("the data-parallel step did not return replicated parameters")
    factors = [out[1][0].factors for out in (one, parallel)]  # the K-FAC state's factors
    return (
        relative_gap(one[2], parallel[2]),
        relative_gap(one[0], parallel[0]),
        relative_gap(*factors),
    )


def accuracy(params, x, y):
    return float(jnp.mean(jnp.argmax(MODEL.apply({"params": params}, x), -1) == y))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=STEPS, help=f"training steps ({STEPS})")
    parser.add_argument("--quick", action="store_true", help="40 training steps")
    args = parser.parse_args()
    steps = 40 if args.quick else args.steps
    train_data, (x_test, y_test) = data()
    n = jax.device_count()
    if BATCH % n:
        raise SystemExit(f"the batch of {BATCH} does not split over {n} devices")
    # Auto axes: the compiler places the collectives. (jax.make_mesh's default,
    # Explicit axes, makes every sharding part of the types; K-FAC's statistics
    # do not trace that way yet.)
    mesh = jax.make_mesh((n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    print(f"{n} devices ({jax.devices()[0].platform}), {jax.process_count()} process(es)")
    print(f"batch {BATCH}: {BATCH // n} examples per device, parameters replicated")

    print("one step from the same state, largest relative difference data-parallel - one device:")
    for dtype in (jnp.float32, jnp.float64):
        with jax.enable_x64(dtype == jnp.float64):
            loss_gap, param_gap, factor_gap = one_step_gaps(mesh, train_data, dtype)
        print(
            f"  {jnp.dtype(dtype).name}: loss {loss_gap:.1e}, parameters {param_gap:.1e}, "
            f"K-FAC factors {factor_gap:.1e}"
        )

    print(f"training {steps} steps on one device ...", flush=True)
    single_params, single = train(train_data, steps=steps)
    print(f"training {steps} steps data-parallel on {n} devices ...", flush=True)
    parallel_params, parallel = train(train_data, mesh=mesh, steps=steps)
    for step in [*range(0, steps, 20), steps - 1]:
        print(
            f"step {step + 1:4d}  loss one device {single[step]:.6f}  "
            f"data-parallel {parallel[step]:.6f}"
        )
    print(
        f"held-out accuracy: one device {accuracy(single_params, x_test, y_test):.3f}, "
        f"data-parallel {accuracy(parallel_params, x_test, y_test):.3f}"
    )


if __name__ == "__main__":
    main()
