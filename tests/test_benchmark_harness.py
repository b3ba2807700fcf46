"""The benchmark harness: timing protocol and BENCHMARKS.md sections."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.harness import (
    Timing,
    affinity,
    compare,
    median_timings,
    one_core,
    ratio_table,
    run_in_child,
    timings_to_json,
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


def _counting_step(seen: list[int]):
    """A chained step that doubles x and records its call number n (the carry's)."""

    def step(carry):
        x, n = carry
        jax.debug.callback(lambda v: seen.append(int(v)), n, ordered=True)
        return x * 2.0, n + 1

    return step


def test_compare_chained_feeds_each_result_to_the_next_call():
    seen = []
    timings = compare(
        {"doubling": (_counting_step(seen), ((jnp.ones(3), jnp.zeros((), jnp.int32)),))},
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


def test_compare_donated_chain_consumes_copies_not_the_given_arguments():
    seen = []
    given = (jnp.ones(3), jnp.zeros((), jnp.int32))
    compare({"doubling": (_counting_step(seen), (given,))}, rounds=5, calls_per_round=3,
            warmup=1, donate=True, chained=True)  # fmt: skip
    jax.effects_barrier()
    assert seen == [0] + [0, 1, 2] * 5
    assert not any(a.is_deleted() for a in given)
    np.testing.assert_array_equal(given[0], np.ones(3))
    with pytest.raises(ValueError, match="needs chained=True"):
        compare({"one": (lambda a: a, (jnp.ones(2),))}, rounds=5, donate=True)


def test_write_section_replaces_its_own_section_and_keeps_others(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    write_section("a", "first A", path)
    write_section("b", "only B", path)
    write_section("a", "second A", path)
    text = path.read_text()
    assert "second A" in text and "first A" not in text and "only B" in text
    assert text.count("<!-- benchmark:a -->") == 1


def test_run_in_child_adds_environment_variables():
    assert run_in_child("os:getenv", "JAXNUM_CHILD", env={"JAXNUM_CHILD": "set"}) == "set"
    assert run_in_child("os:getenv", "JAXNUM_CHILD") is None


@pytest.mark.skipif(one_core() is None, reason="needs Linux affinity and two or more cores")
@pytest.mark.slow
def test_run_in_child_runs_the_function_in_a_fresh_process_pinned_if_asked():
    assert run_in_child("benchmarks.harness:affinity", pin_one_core=True) == [one_core()]
    assert run_in_child("benchmarks.harness:affinity") == affinity()
    assert len(affinity()) > 1  # the parent itself stays unpinned


def test_median_timings_takes_the_median_over_processes():
    def run(median):
        t = Timing("a", median, 1.0, 5, 2, (median,) * 5)
        return timings_to_json({"a": t})

    merged = median_timings([run(3.0), run(1.0), run(2.0)])["a"]
    assert merged.median_s == 2.0 and merged.rounds == 15 and len(merged.samples_s) == 15
