"""The repository's own checks: ruff (lint and format, configured in pyproject.toml) passes, and the
package list in pyproject.toml holds every package under adapterkit/ (a wheel built from it has them all)."""

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff_passes(command):
    done = subprocess.run([sys.executable, "-m", "ruff", *command, "."], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_package_is_listed_for_the_wheel():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "adapterkit").rglob("__init__.py")}
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert listed - found == {"adapterkit_kernels", "adapterkit_kernels.csrc"}


def test_every_kernel_source_is_package_data():
    """The C++ sources compiled at first use (``adapterkit_kernels.qmatmul_cpu``) travel in the wheel."""
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    package = ROOT / "kernels" / "adapterkit_kernels"
    sources = {p.relative_to(package) for p in package.rglob("*.cpp")}
    shipped = {
        p.relative_to(package)
        for name, patterns in globs.items()
        if name.startswith("adapterkit_kernels")
        for g in patterns
        for p in (package / "/".join(name.split(".")[1:])).glob(g)
    }
    assert sources and sources <= shipped


def test_the_kernels_folder_hides_no_kernels_package():
    """Run from the repository root (``python -m pytest`` puts it first on sys.path), ``import kernels``
    must not find the project's folder as a package: transformers >= 5.25 imports the ``kernels``
    distribution at import time and would get this folder instead. ``kernels/`` stays a plain folder
    holding ``adapterkit_kernels``."""
    code = (
        "import importlib.util, sys; spec = importlib.util.find_spec('kernels'); "
        "print('none' if spec is None else (spec.origin or 'namespace'))"
    )
    found = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    origin = found.stdout.strip()
    assert not (ROOT / "kernels" / "__init__.py").exists()
    assert not origin.startswith(str(ROOT / "kernels")), f"'import kernels' from the root finds {origin}"
    spec = subprocess.run(
        [sys.executable, "-c", "import adapterkit_kernels as k; print(k.__file__)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert spec.stdout.strip() == str(ROOT / "kernels" / "adapterkit_kernels" / "__init__.py"), spec.stderr
