"""The lent GPU machine's Python packages, simulated on a CPU for the loan test.

With this folder first on PYTHONPATH (``tests/test_gpu_check.py`` puts it there), every Python
process started from it refuses the imports the GPU machine (docs/gpu.md) could not satisfy:

- ``dvc``, ``dvclive`` and ``dvc_*``, whoever imports them: the machine has neither;
- a top-level module listed in the JSON file named by ``LONGTAIL_MACHINE_LACKS`` (module ->
  distributions the machine lacks, written by the test from ``benchmarks.gpu_wheels.MACHINE``)
  when project code imports it: a file outside this Python's installation (its prefixes and
  site-packages folders), or ``python -c``.
  The installed packages' own imports are left alone: the machine's versions bring their own.

A module that the carried wheels installed into ``GPU_LOAN_SITE`` provide is allowed, as there.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import os
import sys

_LACKS: dict[str, list[str]] = {}
if os.environ.get("LONGTAIL_MACHINE_LACKS"):
    with open(os.environ["LONGTAIL_MACHINE_LACKS"]) as _source:
        _LACKS = json.load(_source)
_SITE = os.environ.get("GPU_LOAN_SITE", "")
# This Python's installation: its prefixes and every site-packages folder on sys.path.
_SITE_DIRS = [p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages")]
_INSTALL = tuple(
    {os.path.realpath(p) + os.sep for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    | {os.path.realpath(p) + os.sep for p in _SITE_DIRS}
)


def _importer() -> str:
    """The file whose code runs the import (the import machinery's own frames skipped)."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if not (
            name.startswith("<frozen") or name.endswith(os.path.join("importlib", "__init__.py"))
        ):
            return name
        frame = frame.f_back
    return ""


class MachineImports(importlib.abc.MetaPathFinder):
    """Raises ModuleNotFoundError for what the GPU machine lacks; leaves the rest to the others."""

    def find_spec(self, name, path=None, target=None):
        if "." in name:
            return None  # the parent package was allowed
        always = name in ("dvc", "dvclive") or name.startswith("dvc_")
        if not always and name not in _LACKS:
            return None
        if _SITE and importlib.machinery.PathFinder.find_spec(name, [_SITE]) is not None:
            return None
        importer = _importer()
        if not always and os.path.realpath(importer).startswith(_INSTALL):
            return None
        lacks = ", ".join(_LACKS.get(name, [name]))
        raise ModuleNotFoundError(
            f"No module named {name!r}: the GPU machine lacks {lacks} (imported from "
            f"{importer}); carry it as a wheel (python -m benchmarks.gpu_wheels) or do without",
            name=name,
        )


sys.meta_path.insert(0, MachineImports())
