"""Helpers the stage scripts share: error reporting, signatures, model files, DVCLive logging.

Mechanisms only: every path and value arrives as an argument from ``stages/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from longtail import io, nets


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's ``main``; expected errors print one clear line (no traceback) and exit 2.

    Expected errors are the boundary errors (``ValueError`` and its subclasses such as
    ``ConfigError`` and ``ChecksumError``), missing files and a diverged training run. Set
    ``LONGTAIL_TRACEBACK=1`` to see the traceback anyway.
    """
    from longtail.train import TrainingDiverged

    try:
        main()
    except (ValueError, FileNotFoundError, TrainingDiverged) as err:
        if os.environ.get("LONGTAIL_TRACEBACK"):
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def hash_files(paths: Iterable[Path]) -> str:
    """md5 over the names and bytes of ``paths`` (directories are walked in sorted order)."""
    digest = hashlib.md5()
    for path in sorted(Path(p) for p in paths):
        files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
        for f in files:
            if "__pycache__" in f.parts:
                continue
            digest.update(str(f).encode())
            digest.update(io.md5sum(f).encode())
    return digest.hexdigest()


def signature(params: Mapping[str, Any], inputs: Iterable[Path]) -> str:
    """Hash of a stage's params (as a JSON-able mapping) and its code and input files."""
    digest = hashlib.md5(json.dumps(params, sort_keys=True, default=str).encode())
    digest.update(hash_files(inputs).encode())
    return digest.hexdigest()


def save_model(
    path: Path,
    model: nn.Module,
    arch: str,
    num_classes: int,
    in_channels: int,
    config: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Atomically write a model file with everything needed to rebuild it."""
    io.save_torch(
        {
            "arch": arch,
            "num_classes": num_classes,
            "in_channels": in_channels,
            "state_dict": model.state_dict(),
            "config": dict(config),
            **(extra or {}),
        },
        path,
    )


def load_model(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model written by :func:`save_model`; returns ``(model, the file's dict)``."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{path} is missing: run the stage that writes it (dvc repro)")
    blob = torch.load(path, map_location="cpu", weights_only=False)
    model = nets.create(blob["arch"], blob["num_classes"], in_channels=blob["in_channels"])
    model.load_state_dict(blob["state_dict"])
    return model, blob


class EpochLogger:
    """Per-epoch metrics into DVCLive (``dvcyaml=False``; dvc.yaml declares the outputs).

    A resumed run replays the epochs stored in its checkpoint first, so the curves continue where
    they stopped instead of restarting.
    """

    def __init__(self, directory: Path, enabled: bool = True) -> None:
        self.enabled = enabled
        self.live = None
        if enabled:
            from dvclive import Live

            if directory.exists():
                shutil.rmtree(directory)
            self.live = Live(dir=str(directory), dvcyaml=False, save_dvc_exp=False, report=None)

    def __call__(self, epoch: int, metrics: Mapping[str, float]) -> None:
        if self.live is None:
            return
        for key, value in metrics.items():
            if key not in ("epoch",):
                self.live.log_metric(key, float(value))
        self.live.next_step()

    def replay(self, history: Iterable[Mapping[str, float]]) -> None:
        for i, metrics in enumerate(history):
            self(i, metrics)

    def close(self) -> None:
        if self.live is not None:
            self.live.end()


def write_plot_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Atomically write a list of dicts as CSV (DVC plot data)."""
    import pandas as pd

    with io.atomic_path(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
