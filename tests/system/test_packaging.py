"""`python -m build` gives an sdist and a wheel that hold everything the installed app needs
(every module, the admin templates, Django migrations, py.typed, the console script) and none
of the development trees; the wheel, installed on its own, runs."""

from __future__ import annotations

import email
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from ..support.helpers import REPO

pytestmark = pytest.mark.slow

PACKAGE = "django_fhir_migrations"
# Not part of the source: build output, caches, the test servers' jars and run folders.
IGNORED = shutil.ignore_patterns(".git", ".tox", ".venv", "target", ".hapi", ".hfs", "build", "dist",
                                 "*.egg-info", "__pycache__", "*.py[cod]", ".pytest_cache",
                                 ".ruff_cache", "results", "tmp")


def package_files() -> set[str]:
    """What the installed package must contain: every file under django_fhir_migrations/."""
    root = REPO / PACKAGE
    return {
        path.relative_to(REPO).as_posix() for path in root.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo")
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """Build from a copy of the working tree (the checkout stays clean of build output)."""
    work = tmp_path_factory.mktemp("packaging")
    source = work / "src"
    shutil.copytree(REPO, source, ignore=IGNORED)
    done = subprocess.run([sys.executable, "-m", "build", "--outdir", str(work / "dist"), str(source)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # setuptools warns about data folders missing from `packages`; none may be left.
    assert "is absent from the `packages` configuration" not in done.stdout + done.stderr
    (wheel,) = (work / "dist").glob("*.whl")
    (sdist,) = (work / "dist").glob("*.tar.gz")
    return wheel, sdist


def test_wheel_holds_every_module_template_and_marker(built):
    wheel, _ = built
    names = set(zipfile.ZipFile(wheel).namelist())
    in_package = {n for n in names if n.startswith(f"{PACKAGE}/")}
    expected = package_files()
    assert expected - in_package == set(), "missing from the wheel"
    assert in_package - expected == set(), "in the wheel but not in the source"
    assert f"{PACKAGE}/py.typed" in names
    assert any(n.startswith(f"{PACKAGE}/templates/") and n.endswith(".html") for n in names)
    assert f"{PACKAGE}/migrations/__init__.py" in names
    assert f"{PACKAGE}/contrib/flask.py" in names and f"{PACKAGE}/__main__.py" in names
    assert not [n for n in names if n.split("/")[0] in ("tests", "example_project", "benchmarks")]


def test_wheel_metadata_declares_the_console_script_and_extras(built):
    wheel, _ = built
    archive = zipfile.ZipFile(wheel)
    dist_info = next(n.split("/")[0] for n in archive.namelist() if ".dist-info/" in n)
    entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    assert "fhir-migrations = django_fhir_migrations.cli:main" in entry_points
    metadata = email.message_from_bytes(archive.read(f"{dist_info}/METADATA"))
    assert "flask" in metadata.get_all("Provides-Extra")
    requires = metadata.get_all("Requires-Dist")
    assert any(r.startswith("django") for r in requires)
    assert any(r.lower().startswith("flask") and "extra == \"flask\"" in r for r in requires)


def test_sdist_holds_the_package_and_project_files_but_no_development_trees(built):
    _, sdist = built
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert package_files() - names == set(), "missing from the sdist"
    for required in ("README.md", "LICENSE", "setup.py", "pyproject.toml", "MANIFEST.in"):
        assert required in names
    assert not [n for n in names if n.split("/")[0] in ("tests", "example_project", "benchmarks", ".hapi")]
    # Of docs/, only what the README (the package's long description) shows.
    assert {n for n in names if n.startswith("docs/") and "." in n} == {"docs/screenshots/admin-status.png"}
    assert not [n for n in names if n.endswith((".pyc", ".jar"))]


def test_installed_wheel_runs_and_finds_its_templates(built, tmp_path):
    wheel, _ = built
    target = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
                                "--target", str(target), str(wheel)],
                               capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    probe = subprocess.run(
        [sys.executable, "-c",
         "import importlib.resources, django_fhir_migrations as p; print(p.__file__); "
         "t = importlib.resources.files(p) / 'templates' / 'admin' / 'django_fhir_migrations'; "
         "print(sorted(x.name for x in t.iterdir()))"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.startswith(str(target))  # the installed copy, not the checkout
    assert ".html" in probe.stdout
    script = target / "bin" / "fhir-migrations"
    assert script.exists()
    shown = subprocess.run([sys.executable, str(script), "--version"], capture_output=True,
                           text=True, cwd=tmp_path, env=env, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("fhir-migrations ")


def test_the_readme_shows_what_the_sdist_holds_and_how_to_install_a_wheel(built):
    _, sdist = built
    with tarfile.open(sdist) as archive:
        names = {"/".join(n.split("/")[1:]) for n in archive.getnames()}
    readme = (REPO / "README.md").read_text()
    for image in re.findall(r"!\[[^]]*\]\(([^)]+)\)", readme):
        assert image in names, f"the README shows {image}, which is not in the sdist"
    assert "python -m build" in readme and "pip install dist/django_fhir_migrations-" in readme
