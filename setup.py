"""Package metadata for django-fhir-migrations (the build system is declared in pyproject.toml)."""

import re
from pathlib import Path

from setuptools import find_namespace_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(
    r'__version__ = "([^"]+)"', (HERE / "django_fhir_migrations" / "engine" / "version.py").read_text()
).group(1)

setup(
    name="django-fhir-migrations",
    version=VERSION,
    description="Versioned data migrations for FHIR servers, the Django/Alembic way.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    # Namespace discovery: the template and static folders are data packages too, so setuptools
    # does not warn that they are absent from `packages` (and installs them all the same).
    packages=find_namespace_packages(include=["django_fhir_migrations", "django_fhir_migrations.*"],
                                     exclude=["*.__pycache__"]),
    include_package_data=True,
    # testserver/hapi: the pom and Java sources `fhir-migrations testserver` builds with Maven.
    package_data={"django_fhir_migrations": ["py.typed", "templates/**/*", "static/**/*",
                                             "testserver/hapi/**/*"]},
    zip_safe=False,
    python_requires=">=3.10",
    install_requires=[
        # No upper bound: a new Django is tried by `make test-deprecations` (its deprecation
        # warnings are errors there) before it breaks anyone; tox.ini names what is tested.
        "django>=4.2",
        "requests>=2.28,<3",
        "fhirclient>=4.1,<5",
    ],
    extras_require={
        "flask": ["flask>=2.2,<4"],
        "smart": ["pyjwt>=2.6,<3", "cryptography>=41"],
        "progress": ["tqdm>=4.60,<5"],
        # The admin page's Apply as a task of Django's tasks framework (built into Django 6).
        "tasks": ["django-tasks>=0.10"],
        "test": [
            "pytest>=7.4,<10",
            "pytest-django>=4.5,<5",
            "flask>=2.2,<4",
            "pyjwt>=2.6,<3",
            "cryptography>=41",
            "tqdm>=4.60,<5",
            "ruff>=0.5",
            "mypy>=1.8",  # make lint: the package type-checks
            "types-requests",
            "carebundle>=0.5,<1",  # tests/server/test_bench_smoke.py runs the benchmark on a tiny N
            "build>=1.0",  # tests/system/test_packaging.py builds the sdist and wheel
            "tox>=4",  # tox.ini: the suite against each supported Django
            # tests/server/test_admin_tasks.py runs its database backend and db_worker; from 0.12 they
            # are a separate package that needs Django 5.2, and tox also tests Django 4.2.
            "django-tasks>=0.10,<0.12",
        ],
        "browser": ["playwright>=1.40,<2"],
        "bench": ["carebundle>=0.5,<1", "tqdm>=4.60,<5"],
    },
    entry_points={"console_scripts": ["fhir-migrations=django_fhir_migrations.cli:main"]},
    classifiers=[
        "Framework :: Django",
        "Framework :: Django :: 4.2",
        "Framework :: Django :: 5.0",
        "Framework :: Django :: 5.1",
        "Framework :: Django :: 5.2",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
    ],
)
