"""The documentation site builds without warnings, documents every public name; its code runs."""

import importlib
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# module -> its API page (docs/api/<page>.md)
API_PAGES = {
    "jaxnum.precision": "precision",
    "jaxnum.autodiff": "autodiff",
    "jaxnum.linalg": "linalg",
    "jaxnum.lora": "lora",
    "jaxnum.optim": "optim",
    "jaxnum.kron": "kron",
    "jaxnum.kfac": "kfac",
    "jaxnum.kfac.nnx": "kfac_nnx",
    "jaxnum.serialization": "serialization",
}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Builds the site once with mkdocs --strict (every warning is an error)."""
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr
    return out


def _anchors(site, page: str) -> set[str]:
    return set(re.findall(r'id="([^"]+)"', (site / "api" / page / "index.html").read_text()))


@pytest.mark.parametrize("module", sorted(API_PAGES))
def test_every_public_name_has_a_reference_entry(site, module):
    anchors = _anchors(site, API_PAGES[module])
    names = importlib.import_module(module).__all__
    # A name that is also a submodule's (precision.loss_scaling) is documented by its full path.
    missing = [
        n
        for n in names
        if f"{module}.{n}" not in anchors
        and f"{module}.{n}.{n}" not in anchors
        and f"{module}.{n}" not in API_PAGES  # a subpackage with its own page
    ]
    assert not missing, f"{module}: no API entry for {missing}"


def test_every_page_is_in_the_navigation():
    config = (ROOT / "mkdocs.yml").read_text()
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert pages, "no documentation pages"
    assert not [p for p in pages if p not in config], "pages missing from mkdocs.yml's nav"
    assert {f"api/{page}.md" for page in API_PAGES.values()} <= pages


@pytest.mark.parametrize("page", sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")))
def test_guide_code_runs(page):
    """Every ```python block of a page, run in order in one namespace."""
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.S)
    if not blocks:
        pytest.skip("no python code on this page")
    namespace: dict = {}
    exec(compile("\n".join(blocks), str(DOCS / page), "exec"), namespace)


def test_no_sphinx_role_is_left_as_literal_text(site):
    # mkdocstrings renders ":func:`x`" as it is; cross-references are [`x`][jaxnum.module.x].
    role = re.compile(r":(func|class|meth|mod|attr|data|obj|exc):`")
    found = {
        page.relative_to(site).as_posix(): len(role.findall(page.read_text()))
        for page in site.rglob("*.html")
        if role.search(page.read_text())
    }
    assert not found, f"literal Sphinx roles in the built site: {found}"


def test_the_kfac_quickstarts_run_on_their_own():
    """Each K-FAC snippet of the optimisation guide, copied alone, runs: it has its imports."""
    text = (DOCS / "guides" / "optimisation.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "kfac" in b]
    assert len(blocks) >= 3  # linen, NNX, adaptive NNX
    for block in blocks:
        exec(compile(block, "optimisation.md (one block)", "exec"), {})
