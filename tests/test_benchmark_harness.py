"""The benchmark harness: timing protocol and BENCHMARKS.md sections."""

import jax
import jax.numpy as jnp
import pytest

from benchmarks.harness import (
    affinity,
    compare,
    one_core,
    ratio_table,
    run_on_one_core,
    write_section,
)


def test_compare_times_every_variant_with_compile_time_apart():
    x = jnp.ones((64, 64))
    timings = compare(
        {"small": (lambda a: a @ a, (x,)), "bigger": (lambda a: a @ a @ a @ a, (x,))},
        rounds=5,
        calls_per_round=2,
        warmup=1,
    )
    assert set(timings) == {"small", "bigger"}
    for t in timings.values():
        assert len(t.samples_s) == 5 and t.median_s > 0 and t.compile_s > 0
        assert min(t.samples_s) <= t.median_s <= max(t.samples_s)
    table = ratio_table(timings, "small")
    assert "| small |" in table and table.splitlines()[2].endswith("| 1.000 |")


def test_compare_refuses_fewer_than_five_rounds():
    with pytest.raises(ValueError, match="rounds must be >= 5"):
        compare({"f": (lambda a: a, (jnp.ones(2),))}, rounds=3)


def test_compare_chained_feeds_each_result_to_the_next_call():
    seen = []

    def step(carry):
        x, n = carry
        jax.debug.callback(lambda v: seen.append(int(v)), n, ordered=True)
        return x * 2.0, n + 1

    timings = compare(
        {"doubling": (step, ((jnp.ones(3), jnp.zeros((), jnp.int32)),))},
        rounds=5,
        calls_per_round=3,
        warmup=1,
        chained=True,
    )
    jax.effects_barrier()
    assert len(timings["doubling"].samples_s) == 5
    # the warm-up call, then each round a chain 0, 1, 2 restarted from the arguments
    assert seen == [0] + [0, 1, 2] * 5
    with pytest.raises(ValueError, match="exactly one argument"):
        compare({"two": (lambda a, b: a, (jnp.ones(2), jnp.ones(2)))}, rounds=5, chained=True)


def test_write_section_replaces_its_own_section_and_keeps_others(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    write_section("a", "first A", path)
    write_section("b", "only B", path)
    write_section("a", "second A", path)
    text = path.read_text()
    assert "second A" in text and "first A" not in text and "only B" in text
    assert text.count("<!-- benchmark:a -->") == 1


@pytest.mark.skipif(one_core() is None, reason="needs Linux affinity and two or more cores")
def test_run_on_one_core_runs_the_function_in_a_child_pinned_to_one_core():
    assert run_on_one_core("benchmarks.harness:affinity") == [one_core()]
    assert len(affinity()) > 1  # the parent itself stays unpinned
