"""The bad-input audit runs: every case gets what it expects, the docs table is current, and
every public function has a case."""

import inspect

import pytest

import jaxnum
from tests import bad_inputs
from tests.bad_inputs import CASES, EXTRA_CALLABLES, NOT_AUDITED, PAGE, SECTIONS, resolve, run


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case_gets_what_it_expects(case):
    run(case)  # raises AssertionError with the details otherwise


def test_case_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})


def test_docs_table_is_what_the_cases_do():
    expected = bad_inputs.render()
    actual = PAGE.read_text() if PAGE.exists() else ""
    assert actual == expected, (
        f"{PAGE} is out of date with tests/bad_inputs.py: run `python -m tests.bad_inputs`"
    )


def _public_modules() -> list:
    """jaxnum, its public subpackages (the modules in ``jaxnum.__all__``) and kfac.nnx."""
    subpackages = [getattr(jaxnum, n) for n in jaxnum.__all__]
    return [jaxnum, *(m for m in subpackages if inspect.ismodule(m)), jaxnum.kfac.nnx]


def _public_functions() -> dict[str, object]:
    """Public dotted name -> function, from the ``__all__``s (classes, modules and constants
    left out; a re-exported function is listed once, under the first name met)."""
    found: dict[str, object] = {}
    seen: set[int] = set()
    for module in _public_modules():
        prefix = "jn" + module.__name__.removeprefix("jaxnum")
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.ismodule(obj) or inspect.isclass(obj) or not callable(obj):
                continue
            if id(obj) not in seen:
                seen.add(id(obj))
                found[f"{prefix}.{name}"] = obj
    return found


def test_every_public_subpackage_has_a_table():
    titles = {title for title, _ in SECTIONS}
    missing = [m.__name__ for m in _public_modules()[1:] if m.__name__ not in titles]
    assert not missing, f"add these subpackages to bad_inputs.SECTIONS, with cases: {missing}"


def test_every_public_function_has_a_case():
    covered = {id(resolve(c.function)) for c in CASES}
    covered_names = {c.function for c in CASES}
    missing = [
        name
        for name, obj in _public_functions().items()
        if id(obj) not in covered and name not in NOT_AUDITED
    ]
    assert not missing, f"public functions with no bad-input case: {missing}"
    extra = [name for name in EXTRA_CALLABLES if name not in covered_names]
    assert not extra, f"constructors / classmethods with no case: {extra}"


def test_not_audited_names_are_public_and_really_not_audited():
    public = _public_functions()
    for name in NOT_AUDITED:
        assert name in public, f"{name} is not a public function"
        assert all(c.function != name for c in CASES), f"{name} has cases: drop it from the list"


def test_case_names_are_public():
    for case in CASES:
        assert callable(resolve(case.function)), case.function
