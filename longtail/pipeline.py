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
from typing import TYPE_CHECKING, Any

from longtail import io

if TYPE_CHECKING:  # torch is imported where it is used: the data stages never load it
    from torch import nn


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's ``main``; expected errors print one clear line (no traceback) and exit 2.

    Expected errors are the boundary errors (``ValueError`` and its subclasses such as
    ``ConfigError`` and ``ChecksumError``), missing files, a failed download and a diverged
    training run; every message is listed in ``docs/errors.md``. Ctrl-C prints how to resume and
    exits 130. Set ``LONGTAIL_TRACEBACK=1`` to see the traceback anyway.
    """
    expected: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, ConnectionError)
    try:
        main()
    except Exception as err:
        # A diverged run can only come from the training loop: look it up only if that was loaded.
        train = sys.modules.get("longtail.train")
        if train is not None:
            expected = (*expected, train.TrainingDiverged)
        if not isinstance(err, expected):
            raise
        if os.environ.get("LONGTAIL_TRACEBACK"):
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(
            "interrupted: outputs are written atomically and training resumes from its last "
            "checkpoint; run dvc repro again to continue",
            file=sys.stderr,
        )
        sys.exit(130)


# Inside an input directory, files with these suffixes (code and manifests) are hashed by content;
# other files (image arrays, extracted frames: derived from them) by name and size, so the
# signature of a stage over gigabytes of frames costs a directory walk, not a read.
CONTENT_SUFFIXES = frozenset({".py", ".csv", ".json", ".txt", ".yaml", ".yml", ".lst"})


def hash_files(paths: Iterable[Path]) -> str:
    """md5 over the inputs' names and contents (directories walked in sorted order).

    A path given directly is hashed by content. Inside a directory, code and manifest files
    (:data:`CONTENT_SUFFIXES`) are hashed by content and the other files by name and size.
    ``__pycache__`` is skipped. Names are taken as given (relative paths keep the hash independent
    of where the repository lives).

    Raises:
        FileNotFoundError: an input is missing (naming it).
    """
    digest = hashlib.md5()
    for path in sorted(Path(p) for p in paths):
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run the stage that writes it (dvc repro)")
        if not path.is_dir():
            _hash_file(digest, path, by_content=True)
            continue
        for f in sorted(f for f in path.rglob("*") if f.is_file()):
            if "__pycache__" not in f.parts:
                _hash_file(digest, f, by_content=f.suffix.lower() in CONTENT_SUFFIXES)
    return digest.hexdigest()


def _hash_file(digest: Any, path: Path, by_content: bool) -> None:
    digest.update(path.as_posix().encode())
    digest.update(io.md5sum(path).encode() if by_content else b"size:%d" % path.stat().st_size)


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
    classifier: str = "linear",
) -> None:
    """Atomically write a model file with everything needed to rebuild it."""
    io.save_torch(
        {
            "arch": arch,
            "num_classes": num_classes,
            "in_channels": in_channels,
            "classifier": classifier,
            "state_dict": model.state_dict(),
            "config": dict(config),
            **(extra or {}),
        },
        path,
    )


def load_model(path: Path, writer: str = "<the stage that writes it>") -> tuple[nn.Module, dict]:
    """Rebuild a model written by :func:`save_model`; returns ``(model, the file's dict)``.

    The file is read with ``weights_only=True`` (:func:`longtail.io.load_torch`): a file from a
    remote or a copy that holds anything but tensors and plain values is refused, never run.

    Args:
        path: the model file.
        writer: the stage that writes it, named in the messages (``dvc repro --force <writer>``).

    Raises:
        FileNotFoundError: ``path`` is missing.
        UnsafeFileError: the file holds other objects (it is not loaded).
        ValueError: the file is truncated or not a model file.
    """
    import torch

    from longtail import nets

    if not Path(path).exists():
        raise FileNotFoundError(f"{path} is missing: run the stage that writes it (dvc repro)")
    rewrite = f"dvc repro --force {writer}"
    blob = _read_model_file(path, rewrite)
    with torch.random.fork_rng(devices=[]):  # the head's initial draw is overwritten below
        model = nets.create(
            blob["arch"],
            blob["num_classes"],
            in_channels=blob["in_channels"],
            classifier=blob.get("classifier", "linear"),  # files from before model.classifier
        )
    model.load_state_dict(blob["state_dict"])
    return model, blob


def _read_model_file(path: Path, rewrite: str) -> dict[str, Any]:
    remedy = (
        f"Delete it and rewrite it with {rewrite}, or dvc checkout it from a remote you trust; "
        "a model file written by an older version of longtail is rewritten the same way."
    )
    try:
        blob = io.load_torch(path, remedy)
    except io.UnsafeFileError:
        raise
    except Exception as err:  # written atomically here, so only a foreign copy can be broken
        raise ValueError(
            f"{path} is not a readable model file ({type(err).__name__}); rewrite it with "
            f"{rewrite}, or dvc checkout it"
        ) from err
    keys = ("arch", "num_classes", "in_channels", "state_dict")
    if not isinstance(blob, dict) or any(k not in blob for k in keys):
        got = sorted(blob) if isinstance(blob, dict) else type(blob).__name__
        raise ValueError(
            f"{path} is not a readable model file: expected a dict with keys {list(keys)}, got "
            f"{got}; rewrite it with {rewrite}, or dvc checkout it"
        )
    return blob


class EpochLogger:
    """Per-epoch metrics into DVCLive (``dvcyaml=False``; dvc.yaml declares the outputs).

    Without the dvclive package, :class:`longtail.live.PlainLive` writes the same files.

    Every run starts from an empty directory; a resumed run first replays the epochs stored in its
    checkpoint (:meth:`replay`), so the curves continue where they stopped and end identical to an
    uninterrupted run's (an epoch the killed run logged after its last checkpoint is not
    duplicated). The DVCLive step of epoch ``e`` is ``first_step + e``: the finetune stage starts
    where pretrain's epochs end, so its curves continue after pretrain's on one step axis.
    """

    def __init__(self, directory: Path, enabled: bool = True, first_step: int = 0) -> None:
        self.enabled = enabled
        self.first_step = first_step
        self.live = None
        if enabled:
            from longtail.live import open_live  # dvclive, or its files without it

            if directory.exists():
                shutil.rmtree(directory)
            self.live = open_live(directory)

    def __call__(self, epoch: int, metrics: Mapping[str, float]) -> None:
        if self.live is None:
            return
        self.live.step = self.first_step + epoch
        for key, value in metrics.items():
            if key != "epoch":
                self.live.log_metric(key, float(value))
        self.live.next_step()

    def replay(self, history: Iterable[Mapping[str, float]]) -> None:
        """Log the epochs of a checkpoint's history again, as they were logged the first time."""
        for epoch, metrics in enumerate(history):
            self(epoch, metrics)

    @property
    def step(self) -> int:
        """The next DVCLive step (the number of epochs logged)."""
        return self.live.step if self.live is not None else 0

    def close(self) -> None:
        if self.live is not None:
            self.live.end()


def cpu_model() -> str:
    """The CPU's model name as ``lscpu`` prints it (``/proc/cpuinfo``), else the platform's."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine(device: Any) -> dict[str, Any]:
    """What a result depends on besides params, code and data, for the metrics files.

    Floating-point results differ in their last digits between CPU models and thread counts (and
    300 test images turn one changed prediction into 0.33 points), so the metrics record the CPU
    model, torch's thread count and the device: ``dvc metrics diff`` then shows why a fresh run's
    numbers moved.
    """
    import torch

    return {"cpu": cpu_model(), "threads": torch.get_num_threads(), "device": str(device.type)}


def write_plot_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Atomically write a list of dicts as CSV (DVC plot data)."""
    import pandas as pd

    with io.atomic_path(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
