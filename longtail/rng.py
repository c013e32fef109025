"""The global random states (Python, NumPy, torch CPU and CUDA) as plain values, so that a
checkpoint holding them loads with ``weights_only=True``, and their restoration. Split from the
training loop (``longtail/train.py``), whose checkpoints carry them.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """Global RNG states (Python, NumPy, torch CPU and CUDA) as tensors, numbers and lists.

    Plain values so that a checkpoint loads with ``weights_only=True``: Python's state tuple as a
    list, NumPy's legacy MT19937 state as its dict form with the key as an int64 tensor.
    """
    version, internal, gauss_next = random.getstate()
    numpy = np.random.get_state(legacy=False)  # {"bit_generator", "state": {key, pos}, ...}
    state = {
        "python": [version, list(internal), gauss_next],
        "numpy": {
            "bit_generator": numpy["bit_generator"],
            "state": {
                "key": torch.from_numpy(numpy["state"]["key"].astype(np.int64)),  # (624,)
                "pos": int(numpy["state"]["pos"]),
            },
            "has_gauss": int(numpy["has_gauss"]),
            "gauss": float(numpy["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    numpy = state["numpy"]
    np.random.set_state(
        {
            **numpy,
            "state": {
                "key": numpy["state"]["key"].numpy().astype(np.uint32),
                "pos": numpy["state"]["pos"],
            },
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
