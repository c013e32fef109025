"""benchmarks.gpu_wheels: the scan of the GPU check's imports and what a loan must carry.

The import reader is checked on small sources written here; the scan of the real tree must find
the packages the pipeline is known to import, dvclive as optional only (longtail.live falls back
without it) and nothing from dvc; the requirement closure is read from installed metadata.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import gpu_check, gpu_wheels


def test_imports_of_marks_imports_under_except_import_error_optional() -> None:
    source = """
import os, numpy.linalg
from torch import nn
from . import sibling
try:
    import dvclive
    from ruamel import yaml
except (ImportError, OSError):
    import funcy
try:
    import pandas
except ValueError:
    pass
def late():
    import sklearn.metrics
"""
    assert gpu_wheels.imports_of(source) == [
        ("os", False),
        ("numpy.linalg", False),
        ("torch.nn", False),
        ("torch", False),
        ("dvclive", True),
        ("ruamel.yaml", True),
        ("ruamel", True),
        ("funcy", False),  # the fallback itself is required
        ("pandas", False),  # ValueError does not make it optional
        ("sklearn.metrics", False),
    ]


def test_scan_follows_project_imports_and_keeps_third_party_ones(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("import yaml\n")
    (tmp_path / "pkg" / "inner.py").write_text("import scipy.special\n")
    (tmp_path / "other.py").write_text("import never_reached\n")  # not imported by the entry
    entry = tmp_path / "entry.py"
    entry.write_text(
        "import sys\nfrom pkg.inner import x\ntry:\n    import dvclive\nexcept ImportError:\n"
        "    pass\n"
    )
    found = gpu_wheels.scan([entry], roots=(tmp_path,))
    assert found.required == {"yaml": {"pkg/__init__.py"}, "scipy": {"pkg/inner.py"}}
    assert found.optional == {"dvclive": {"entry.py"}}
    assert sorted(p.name for p in found.files) == ["__init__.py", "entry.py", "inner.py"]


def test_the_gpu_check_imports_what_the_machine_has_and_dvclive_optionally() -> None:
    found = gpu_wheels.scan(gpu_wheels.entry_files())
    names = {p.relative_to(gpu_check.REPO).as_posix() for p in found.files}
    assert {"benchmarks/gpu_check.py", "benchmarks/train_speed.py", "tests/test_cuda.py"} <= names
    assert {"benchmarks/speed/project.py", "longtail/live.py", "stages/launch.py"} <= names
    required = gpu_wheels.distributions(found.required)
    assert {"torch", "torchvision", "numpy", "pandas", "pyyaml", "pytest"} <= set(required.values())
    assert not any(name.startswith("dvc") for name in required)
    assert found.optional == {"dvclive": {"longtail/live.py"}}
    assert gpu_wheels.missing_with_requirements(required.values()) == {}


def test_missing_packages_bring_the_requirements_the_machine_lacks() -> None:
    wanted = gpu_wheels.missing_with_requirements(["dvclive"])
    assert {"dvclive", "dvc", "funcy", "dvc-render"} <= set(wanted)
    assert not {"psutil", "numpy", "pyyaml"} & set(wanted)  # on the machine: not carried
    assert wanted["dvclive"] == gpu_wheels.metadata.version("dvclive")


@pytest.mark.e2e  # asks git for the ignored files
def test_the_travelling_tree_leaves_out_what_git_ignores() -> None:
    files = {p.relative_to(gpu_check.REPO).as_posix() for p in gpu_wheels.travelling_files()}
    assert {"benchmarks/gpu_loan.sh", "benchmarks/gpu_wheels.py", "params.yaml"} <= files
    assert not any(f.startswith((".whl/", ".git/", "data/")) or "__pycache__" in f for f in files)
