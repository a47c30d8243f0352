"""What a package index shows: `python -m build` makes an sdist and a wheel that
`twine check --strict` passes, whose long description (the README) links only to absolute
URLs under the project's home (relative links and images do not resolve on an index), whose
Project-URLs are absolute, and which carry the package data (Lua scripts, py.typed, the
dashboard's templates and static files, the examples `es-workers demo` runs).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from email.parser import HeaderParser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def home() -> str:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return str(project["urls"]["Homepage"])


def test_every_link_of_the_readme_is_absolute_under_the_home_or_an_anchor() -> None:
    readme = (ROOT / "README.md").read_text()
    relative = [target for target in LINK.findall(readme)
                if not target.startswith(("https://", "http://", "#"))]
    assert relative == [], "relative links do not resolve on a package index"
    for target in LINK.findall(readme):
        if target.startswith(home()):  # a file of the tree: it must exist
            path = target.removeprefix(home()).split("/", 3)[-1].split("#")[0]
            assert (ROOT / path).exists(), target


def test_build_and_twine_check_pass_and_the_wheel_shows_well_on_an_index(
    tmp_path: Path,
) -> None:
    built = subprocess.run([sys.executable, "-m", "build", "--outdir", str(tmp_path), str(ROOT)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    warnings = [line for line in (built.stdout + built.stderr).splitlines()
                if "warning" in line.lower() and "byte-compiling" not in line]
    assert warnings == [], warnings
    dist = sorted(tmp_path.iterdir(), key=lambda p: p.suffix)
    assert [p.suffix for p in dist] == [".gz", ".whl"], dist
    checked = subprocess.run([sys.executable, "-m", "twine", "check", "--strict",
                              *map(str, dist)], capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count("PASSED") == 2, checked.stdout

    with zipfile.ZipFile(dist[1]) as wheel:
        names = set(wheel.namelist())
        metadata_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = HeaderParser().parsestr(wheel.read(metadata_name).decode())
    assert metadata["Description-Content-Type"] == "text/markdown"
    urls = metadata.get_all("Project-URL") or []
    assert len(urls) >= 3 and all(u.split(", ", 1)[1].startswith("https://") for u in urls)
    description = metadata.get_payload()
    assert "## " in description
    assert [t for t in LINK.findall(description)
            if not t.startswith(("https://", "#"))] == []
    assert any(t.endswith(".png") and "/raw/" in t for t in LINK.findall(description))
    for wanted in ("es_workers/redis/append.lua", "es_workers/py.typed",
                   "es_workers/dashboard/templates/base.html", "es_workers/examples/bank.py"):
        assert wanted in names, wanted
    assert any(n.startswith("es_workers/dashboard/static/") for n in names)
