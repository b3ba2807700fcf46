"""The ``>>>`` examples in jaxnum's docstrings run and print what they say."""

import doctest
import importlib
import pkgutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxnum

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(jaxnum.__path__, prefix="jaxnum.")
    if not m.name.endswith("__main__")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    globs = {"jax": jax, "jnp": jnp, "np": np, "optax": optax, "jn": jaxnum}
    globs.update({n: getattr(jaxnum, n) for n in jaxnum.__all__})
    globs.update(vars(module))
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name, globs=globs):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
