"""Markers and device parameters of the CUDA test suite (``pytest -m cuda``).

A test (or a parametrization of one) that only a GPU can run carries the ``cuda`` marker and is
skipped, with the reason below, where ``torch.cuda.is_available()`` is False; CI collects it all the
same (``pytest -m cuda --collect-only``). A test whose body also means something on the CPU is
parametrized over :data:`DEVICES`: its ``cpu`` variant carries no marker and runs in every test run,
which proves the test's logic before a GPU ever runs it; its ``cuda`` variant is the GPU check.
"""

from __future__ import annotations

import pytest
import torch

NO_GPU = "needs a CUDA device: torch.cuda.is_available() is False on this machine"
NO_TWO_GPUS = "needs two CUDA devices: torch.cuda.device_count() < 2 on this machine"

CUDA = (
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU),
)
TWO_GPUS = (
    pytest.mark.cuda,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason=NO_TWO_GPUS),
)

# The ``device`` parameter: the CPU variant runs everywhere, the CUDA one where a GPU is.
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=CUDA)]


def cuda_only(test):
    """Mark a whole test as CUDA-only (``cuda`` marker, skipped without a GPU)."""
    for mark in reversed(CUDA):
        test = mark(test)
    return test
