"""Checkpoints of a training stage and the choice of the weights it keeps (``train.keep``).

:class:`Checkpointer` writes atomically and resumes only under the same signature (a hash of the
stage's params, code and inputs); a file that is not plain tensors and values is refused
(``weights_only``). :data:`KEEPS` holds the ``train.keep`` rules: ``last``, or ``best`` (the epoch
of the best val mean per-class accuracy; test is never read). Split from the training loop
(``longtail/train.py``).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from longtail import io
from longtail.registry import Registry


def canonical(obj: Any) -> Any:
    """A copy of nested dicts / lists whose strings are interned and tensors cloned.

    Pickle shares repeated objects by identity, so the same values can be written as different
    bytes: strings read back from a checkpoint are not the interned ones of a fresh run. A file
    written from this copy has the same bytes (the same DVC hash) whether the run was resumed.
    """
    if isinstance(obj, dict):
        return {canonical(k): canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(canonical(v) for v in obj)
    if isinstance(obj, str):
        return sys.intern(obj)
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    return obj


# ------------------------------------------------------------------------------ kept weights
class KeepLast:
    """``train.keep: last``: the network of the last epoch is the stage's result."""

    needs_val = False

    def observe(self, epoch: int, score: float | None, model: nn.Module) -> None:
        """Called after every epoch with the val mean per-class accuracy (None without val)."""

    def restore(self, model: nn.Module, last_epoch: int) -> int:
        """Put the kept weights into ``model``; returns the kept epoch (0-based)."""
        return last_epoch

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


class KeepBest(KeepLast):
    """``train.keep: best``: the weights of the epoch with the best val mean per-class accuracy.

    The earliest epoch wins a tie (a strictly greater score replaces it), as in CDB-CE's CIFAR
    code (``val_accuracy > best_val_accuracy``). The score is that of ``val``, never ``test``.
    A CPU copy of the state dict (parameters and buffers) is taken at each new best; it goes into
    the checkpoint, so a resumed run keeps the same epoch.
    """

    needs_val = True

    def __init__(self) -> None:
        self.epoch: int | None = None
        self.score = -math.inf
        self.weights: dict[str, torch.Tensor] = {}

    def observe(self, epoch: int, score: float | None, model: nn.Module) -> None:
        if score is not None and score > self.score:
            self.epoch, self.score = epoch, score
            self.weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    def restore(self, model: nn.Module, last_epoch: int) -> int:
        if self.epoch is None:
            return last_epoch
        model.load_state_dict(self.weights)
        return self.epoch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "score": self.score, "weights": dict(self.weights)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch, self.score = state["epoch"], float(state["score"])
        self.weights = dict(state["weights"])


KEEPS: Registry[type[KeepLast]] = Registry("train.keep")
KEEPS.add("last", KeepLast)
KEEPS.add("best", KeepBest)


# ------------------------------------------------------------------------------------ checkpoints
class Checkpointer:
    """Atomic checkpoints at ``path`` that resume only under the same ``signature``.

    Args:
        path: the checkpoint file (a persisted, uncached DVC output).
        signature: hash of what the run depends on (params, code, inputs); stored in the file.
        log: receives the one-line reason when a stored checkpoint is not used.
        meta: stored alongside for a reader (the resolved config); never compared.
    """

    def __init__(
        self,
        path: Path,
        signature: str,
        log: Callable[[str], None] = print,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        self.path, self.signature, self.log = Path(path), signature, log
        self.meta = dict(meta or {})

    def load(self) -> dict[str, Any] | None:
        """The stored state if it is readable and has this signature, else None (and says why)."""
        if not self.path.exists():
            return None
        try:  # weights_only: a checkpoint holds tensors and plain values, never code
            state = io.load_torch(self.path, self._remedy())
        except io.UnsafeFileError:
            raise  # a tampered or outdated file: the user decides, it is not overwritten
        except Exception as err:  # a truncated or foreign file: never resume from it
            self.log(
                f"checkpoint {self.path} is unreadable ({type(err).__name__}: "
                f"{str(err)[:120]}); starting fresh"
            )
            return None
        if not isinstance(state, dict) or "signature" not in state:
            self.log(f"checkpoint {self.path} is not a training checkpoint; starting fresh")
            return None
        if state["signature"] != self.signature:
            self.log(
                f"checkpoint {self.path} has a different signature (stored "
                f"{str(state['signature'])[:12]}, now {self.signature[:12]}: params, code or "
                "input data changed); starting fresh"
            )
            return None
        return state

    def _remedy(self) -> str:
        return (
            f"Delete it (rm {self.path}) to train from the first epoch, or put back a checkpoint "
            "you trust; one written by an older version of longtail is deleted the same way."
        )

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` with the signature, atomically (temp file, fsync, rename)."""
        io.save_torch({**state, "signature": self.signature, "meta": self.meta}, self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
