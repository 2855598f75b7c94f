"""What the package says about itself (classifiers, requires-python, dependencies) is what the
matrix in noxfile.py tests, and the Django running the suite is one of the supported ones."""

import ast
import sys
import tomllib
from pathlib import Path

import django

ROOT = Path(__file__).resolve().parent.parent


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def matrix_pairs() -> list[tuple[str, str]]:
    """``PAIRS`` from noxfile.py, read without importing nox."""
    tree = ast.parse((ROOT / "noxfile.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "PAIRS":
            return [tuple(pair) for pair in ast.literal_eval(node.value)]
    raise AssertionError("noxfile.py defines no PAIRS")


def classified(prefix: str) -> set[str]:
    """The X.Y versions the classifiers starting with ``prefix`` name ("3 :: Only" aside)."""
    versions = (c.removeprefix(prefix) for c in project()["classifiers"] if c.startswith(prefix))
    return {v for v in versions if "." in v and v.replace(".", "").isdigit()}


def test_classifiers_name_exactly_the_djangos_and_pythons_the_matrix_runs():
    pairs = matrix_pairs()
    assert classified("Framework :: Django :: ") == {django_ for django_, _ in pairs}
    assert classified("Programming Language :: Python :: ") == {python for _, python in pairs}


def test_requires_python_and_the_django_dependency_start_at_the_oldest_pair():
    oldest_django, oldest_python = matrix_pairs()[0]
    assert project()["requires-python"] == f">={oldest_python}"
    django_requirement = next(d for d in project()["dependencies"] if d.startswith("Django"))
    assert f">={oldest_django}" in django_requirement


def test_the_suite_runs_on_a_supported_pair():
    running = (
        f"{django.VERSION[0]}.{django.VERSION[1]}",
        f"{sys.version_info[0]}.{sys.version_info[1]}",
    )
    assert running in matrix_pairs(), f"Django {running[0]} on Python {running[1]} is not supported"
