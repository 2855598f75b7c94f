"""The support matrix: the whole suite on every supported Django and Python pair.

    .venv/bin/nox                         every pair (SQLite; DATABASE_URL=... for PostgreSQL)
    .venv/bin/nox -t ends                 the oldest and the newest pair, as .ci/run runs them
    .venv/bin/nox -s "tests(django6.1-py3.13)" -- -k webhook    one pair, arguments to pytest

Supported as of 2026-12: Django 5.2 LTS on Python 3.11-3.13, Django 6.0 and 6.1 on Python
3.12-3.13 (Django 6 needs Python 3.12). pyproject.toml's classifiers list the same set, and
``tests/test_packaging.py`` checks that they agree with :data:`PAIRS`.

Each pair gets its own virtualenv under ``.nox/`` with the project and its ``dev`` extra
installed, the Django release pinned to the pair's feature release (the newest patch of it).
Deprecation warnings are errors in every pair (``setup.cfg``), so a newer Django's
``RemovedInDjangoNNWarning`` fails here first.
"""

from __future__ import annotations

import glob
import os
import shutil

import nox

PAIRS: list[tuple[str, str]] = [
    ("5.2", "3.11"),
    ("5.2", "3.12"),
    ("5.2", "3.13"),
    ("6.0", "3.12"),
    ("6.0", "3.13"),
    ("6.1", "3.12"),
    ("6.1", "3.13"),
]
OLDEST, NEWEST = PAIRS[0], PAIRS[-1]

nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True


def interpreter(version: str) -> str:
    """The path of a Python ``version`` (like "3.12"): pyenv's build of it, else one on PATH.

    pyenv's own folder comes first because its shims answer for every version on PATH but fail
    for the ones that are installed and not selected ("pyenv: python3.12: command not found").
    """
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    builds = glob.glob(os.path.join(root, "versions", f"{version}.*", "bin", "python"))
    if builds:
        return max(builds, key=lambda path: [int(p) for p in path.split(os.sep)[-3].split(".")])
    found = shutil.which(f"python{version}")
    return found or f"python{version}"  # nox reports a missing one, which fails the run


@nox.session
@nox.parametrize(
    "python,django",
    [
        nox.param(
            interpreter(python),
            django,
            id=f"django{django}-py{python}",
            tags=["ends"] if (django, python) in (OLDEST, NEWEST) else [],
        )
        for django, python in PAIRS
    ],
)
def tests(session: nox.Session, django: str) -> None:
    """The suite on one Django and Python pair (SQLite, or DATABASE_URL's database)."""
    session.install(".[dev]", f"Django=={django}.*")
    session.run(
        "python", "-c", "import django, sys; print('Django', django.get_version(), sys.version)"
    )
    session.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", *session.posargs)
