"""The layout rules of DESIGN.md, checked on the source: which domain may import which,
no private module of another domain, no import cycle, no module shadowed by a function.

Read from the files' ``import`` statements (module level and inside functions alike),
so a lazy import counts as much as an eager one.
"""

from __future__ import annotations

import ast
import importlib
import pathlib
import pkgutil

import pytest

import jaxnum

PACKAGE = pathlib.Path(jaxnum.__file__).parent
DOMAINS = ("precision", "autodiff", "linalg", "optim", "kron", "kfac", "lora", "serialization")
# domain -> the domains it may import (DESIGN.md, "Data flows one way"); _src is open to all.
ALLOWED = {
    "precision": set(),
    "autodiff": set(),
    "linalg": {"autodiff"},
    "optim": {"precision", "autodiff", "linalg"},
    "kron": {"precision", "autodiff", "linalg"},
    "kfac": {"precision", "autodiff", "linalg", "kron"},
    "lora": {"linalg"},
    "serialization": set(),
    "_src": set(),
}


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path) -> set[str]:
    """Every ``jaxnum...`` module ``path`` imports (``from a import b`` gives a.b when
    that is a module, else a)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("jaxnum")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxnum"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                is_module = (PACKAGE.parent / candidate.replace(".", "/")).with_suffix(
                    ".py"
                ).exists() or (PACKAGE.parent / candidate.replace(".", "/")).is_dir()
                found.add(candidate if is_module else node.module)
    return found


SOURCES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: _imports(path) for name, path in SOURCES.items()}


def _domain(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_no_domain_imports_another_domains_private_module():
    crossing = [
        f"{src} imports {dst}"
        for src, targets in GRAPH.items()
        for dst in targets
        if any(p.startswith("_") for p in dst.split(".")[2:])  # a private module or package
        and _domain(dst) != _domain(src)
        and _domain(dst) != "_src"
    ]
    assert not crossing, crossing


@pytest.mark.parametrize("domain", sorted(ALLOWED))
def test_domains_import_only_what_data_flow_allows(domain):
    wrong = [
        f"{src} imports {dst}"
        for src, targets in GRAPH.items()
        if _domain(src) == domain
        for dst in targets
        if _domain(dst) not in ALLOWED[domain] | {domain, "_src", None}
    ]
    assert not wrong, wrong


def test_nothing_in_the_library_imports_the_tour():
    users = [
        src
        for src, targets in GRAPH.items()
        if _domain(src) not in ("tour", "__main__") and any(_domain(t) == "tour" for t in targets)
    ]
    assert not users, users


def test_no_import_cycles_between_modules():
    # Edges between modules (a package's __init__ re-exporting its own modules is not a
    # cycle of the code's design, so edges into one's own package's __init__ are left out).
    def edges(src):
        return {
            dst
            for dst in GRAPH[src]
            if dst in GRAPH and dst != src and not src.startswith(dst + ".")
        }

    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in edges(node):
            if state.get(nxt) == "open":
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for node in GRAPH:
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_no_module_is_shadowed_by_a_function_of_the_same_name():
    shadowed = []
    for info in pkgutil.walk_packages(jaxnum.__path__, "jaxnum."):
        parent_name, _, leaf = info.name.rpartition(".")
        parent = importlib.import_module(parent_name)
        attribute = getattr(parent, leaf, None)
        if attribute is not None and not isinstance(attribute, type(jaxnum)):
            shadowed.append(info.name)
    assert not shadowed, shadowed
