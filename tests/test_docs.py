"""The documentation site: it builds with `mkdocs build --strict`, and names only the API
that stays (root names, `es_workers.testing`, `es_workers.admin`).

The build needs the `docs` extra. Without it the build test is skipped, unless
ES_REQUIRE_DOCS=1 (CI), which makes a missing MkDocs a failure.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml  # type: ignore[import-untyped]

import es_workers
from es_workers.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
DOCS_PACKAGES = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")
STABLE_MODULES = {"es_workers.testing", "es_workers.admin"}


def missing_docs_packages() -> list[str]:
    missing = []
    for name in DOCS_PACKAGES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        if not found:
            missing.append(name)
    return missing


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built from docs/ into a temporary directory."""
    missing = missing_docs_packages()
    if missing:
        message = f"{', '.join(missing)} not installed: pip install -e '.[docs]'"
        if os.environ.get("ES_REQUIRE_DOCS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    out = tmp_path_factory.mktemp("site")
    # Material prints an end-of-life notice for MkDocs 2 on every build; it is not a warning
    # of this site.
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return out


def test_the_site_builds_strictly_with_every_page_and_the_api_reference(site: Path) -> None:
    for page in DOCS.rglob("*.md"):
        relative = page.relative_to(DOCS).with_suffix("")
        built = site / ("index.html" if relative.name == "index" else relative / "index.html")
        assert built.is_file(), f"{page} was not built"
    api = (site / "api" / "index.html").read_text()
    # Rendered from the docstrings, not only named.
    for text in ("es_workers.Store", "open_from", "es_workers.ConcurrencyError",
                 "hydrate_state", "retry_parked", "Base class of every error"):
        assert text in api, text
    changelog = (site / "changelog" / "index.html").read_text()
    assert "Unreleased" in changelog  # CHANGELOG.md included, not copied


def test_every_page_is_in_the_navigation() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    listed = set(re.findall(r"[\w/-]+\.md", str(config["nav"])))
    on_disk = {str(page.relative_to(DOCS)) for page in DOCS.rglob("*.md")}
    assert listed == on_disk


def test_the_api_reference_names_only_what_the_package_root_exports() -> None:
    """Modules behind the root names may move: the docs must not name them."""
    for page in DOCS.rglob("*.md"):
        for target in re.findall(r"^::: *(\S+)", page.read_text(), re.MULTILINE):
            if target in STABLE_MODULES:
                continue
            package, _, name = target.partition(".")
            assert package == "es_workers" and "." not in name, f"{page}: {target}"
            assert name in es_workers.__all__, f"{page}: {target} is not exported by es_workers"


def test_the_settings_page_documents_every_setting() -> None:
    page = (DOCS / "operations" / "settings.md").read_text()
    for name in Settings.model_fields:
        assert f"`ES_{name.upper()}`" in page, f"docs lack ES_{name.upper()}"


def test_the_readme_links_the_docs_and_the_changelog() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "/docs/index.md)" in readme  # absolute: the README is also the package index's page
    assert "/CHANGELOG.md)" in readme
