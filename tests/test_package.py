"""`longtail` installs as a library: a wheel of the package only, importable outside the checkout.

``pip wheel --no-deps`` builds from a copy of the files the build reads (``pyproject.toml`` and
``longtail/``), so that no ``build/`` or ``*.egg-info`` lands in the checkout, with the
environment's setuptools (``--no-build-isolation``: the test machine has no network). The wheel is
then unpacked into a folder outside the checkout and imported from there by a fresh interpreter
whose working directory is elsewhere, as after ``pip install .``.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import REPO


def test_the_wheel_holds_longtail_only_and_imports_outside_the_checkout(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(REPO / "pyproject.toml", source)
    shutil.copytree(
        REPO / "longtail", source / "longtail", ignore=shutil.ignore_patterns("__pycache__")
    )
    for driver in ("stages", "tools", "tests", "benchmarks"):  # present, as in the checkout
        shutil.copytree(
            REPO / driver, source / driver, ignore=shutil.ignore_patterns("__pycache__")
        )
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(source),
        ],
        check=True,
        cwd=tmp_path,
        capture_output=True,
    )
    (wheel,) = wheels.glob("longtail-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"longtail"}, tops
    assert len(tops) == 2, tops  # the package and its metadata, no stages/tools/tests
    expected = {str(p.relative_to(REPO).as_posix()) for p in (REPO / "longtail").rglob("*.py")}
    assert expected <= set(names)

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = (
        "import torch, longtail\n"
        "from longtail.losses import create\n"
        "loss = create('cdb_ce', class_counts=[500, 120, 30, 5], tau=1.5)\n"
        "value = loss(torch.zeros(2, 4), torch.tensor([0, 3]), torch.zeros(2, 8))\n"
        "print(longtail.__file__)\n"
        "print(round(float(value), 6))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    where, value = proc.stdout.split()
    assert Path(where).resolve().is_relative_to(site.resolve())
    assert float(value) == round(math.log(4), 6)  # zero logits, all weights 1: CE = log C
