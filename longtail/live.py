"""Per-epoch metric files in DVCLive's layout, written by dvclive or, where it is absent, here.

DVCLive (https://dvc.org/doc/dvclive, the ``dvclive`` package, ``Live``/``Metric``/``dump_json``)
writes, for ``Live(dir, dvcyaml=False, save_dvc_exp=False, report=None)``:

- ``<dir>/plots/metrics/<name>.tsv`` per metric: the header ``step<TAB><last part of name>``, then
  one ``step<TAB>value`` row per ``log_metric`` call (NaN and infinities written as text);
- ``<dir>/metrics.json``: the last value of every metric, nested by the parts of its name, and
  ``"step"``, the step of the last completed one; rewritten at every ``next_step`` and ``end``
  (4-space indent, a newline at the end).

:class:`PlainLive` writes exactly these files with the standard library alone, and
:func:`open_live` returns dvclive's ``Live`` where that package imports, else a PlainLive. The
reason: dvclive imports dvc as it loads (``dvclive/live.py`` imports ``dvc.exceptions``), and dvc's
dependency tree cannot travel to a machine without a package index as wheels (hydra-core needs
``antlr4-python3-runtime`` 4.9, which is published as a source archive only), so a GPU machine that
has its own PyTorch and nothing else still writes the curves that dvc.yaml declares.
``tests/test_live.py`` checks that both write the same files for the same calls.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any, Protocol


class LiveLike(Protocol):
    """What the stages use of a DVCLive ``Live``."""

    step: int

    def log_metric(self, name: str, val: float) -> None: ...

    def next_step(self) -> None: ...

    def end(self) -> None: ...


class PlainLive:
    """DVCLive's metric files (``plots/metrics/*.tsv`` and ``metrics.json``) without dvclive."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._step: int | None = None
        self.summary: dict[str, Any] = {}

    @property
    def step(self) -> int:
        return self._step or 0

    @step.setter
    def step(self, value: int) -> None:
        self._step = value

    def log_metric(self, name: str, val: float) -> None:
        """Append ``step, val`` to the metric's TSV and keep ``val`` as its latest value."""
        if not isinstance(val, int | float) or isinstance(val, bool):
            raise TypeError(f"metric {name!r}: expected an int or a float, got {type(val)}")
        value: float | str = val if math.isfinite(val) else str(val)
        path = self.dir / "plots" / "metrics" / f"{name}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        existed = path.exists()
        row = {"step": self.step, os.path.basename(name): value}
        with open(path, "a", encoding="utf-8", newline="") as sink:
            writer = csv.DictWriter(sink, row.keys(), delimiter="\t", lineterminator=os.linesep)
            if not existed:
                writer.writeheader()
            writer.writerow(row)
        node = self.summary
        *parents, leaf = os.path.normpath(name).split(os.path.sep)
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value

    def make_summary(self) -> None:
        if self._step is not None:
            self.summary["step"] = self.step
        with open(self.dir / "metrics.json", "w", encoding="utf-8") as sink:
            json.dump(self.summary, sink, indent=4)
            sink.write("\n")

    def next_step(self) -> None:
        """End the current step: rewrite ``metrics.json`` and count one step on."""
        if self._step is None:
            self._step = 0
        self.make_summary()
        self.step += 1

    def end(self) -> None:
        """Rewrite ``metrics.json`` with the last completed step (as ``Live.end`` does)."""
        if "step" in self.summary:
            self.step = self.summary["step"]
        self.make_summary()


def open_live(directory: str | Path) -> LiveLike:
    """dvclive's ``Live`` on ``directory`` where dvclive imports, else a :class:`PlainLive`."""
    try:
        from dvclive import Live
    except ImportError:
        return PlainLive(directory)
    return Live(dir=str(directory), dvcyaml=False, save_dvc_exp=False, report=None)
