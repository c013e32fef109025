"""Where and how fast a run computes: the device, the CPU thread count, determinism, and the
resolved speed switches of ``train`` (bf16 autocast, channels_last, ``torch.compile``).

Split from the training loop (``longtail/train.py``), which uses them; the stages set the device,
threads and determinism once before any work (``stages/common.start``).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
from torch import nn

from longtail.config import ConfigError, TrainConfig


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device: cuda was requested but torch.cuda.is_available() is False "
            "(no GPU, or a CPU-only torch); set device: auto or device: cpu"
        )
    return torch.device(name)


def set_cpu_threads(threads: int | None, device: torch.device) -> None:
    """torch's intra-op thread count for a CPU run (``None`` keeps torch's default).

    The thread count changes the floating-point summation order, hence the last digits of every
    result: a fixed count (``train.cpu_threads``) makes CPU runs comparable across machines with
    different core counts. CUDA runs are left alone.
    """
    if device.type == "cpu" and threads is not None:
        torch.set_num_threads(threads)


def set_determinism(enabled: bool, device: torch.device) -> None:
    """Make runs repeat exactly (CPU: bit for bit; CUDA: PyTorch's documented switches).

    On: ``torch.use_deterministic_algorithms(True)`` (deterministic kernels, an error for an op
    that has none; it also fills new uninitialised memory), cuDNN's deterministic algorithms and no
    cuDNN autotuning (``cudnn.benchmark``), ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` for cuBLAS (set
    before the first CUDA call unless already set) and Inductor's deterministic mode (no kernel
    benchmarking that changes numerics) for ``torch.compile``. Off on CUDA: cuDNN autotuning is on.
    What determinism costs is in docs/reliability.md. The CPU path is repeatable either way on one
    machine with one thread count; the switch makes sure no op picks a racy kernel.

    ``torch.use_deterministic_algorithms`` imports Inductor's config (1-2 s, most of a training
    stage's start on the CPU) only to copy the switch into it. On CUDA it does so; on the CPU the
    switch is set without that import, and :func:`inductor_determinism` copies it when a model is
    compiled.
    """
    cuda = device.type == "cuda"
    if enabled and cuda:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if cuda or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(enabled)
    else:
        torch._C._set_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled and cuda


def inductor_determinism() -> None:
    """Inductor's deterministic mode follows the global switch (before ``torch.compile``)."""
    import torch._inductor.config as inductor

    if hasattr(inductor, "deterministic"):  # absent from older PyTorch releases
        inductor.deterministic = torch.are_deterministic_algorithms_enabled()


@dataclass(frozen=True)
class FastPath:
    """Resolved speed switches of ``train`` (``auto``: on for CUDA, off for the CPU)."""

    bf16: bool
    channels_last: bool
    compile: bool

    @classmethod
    def resolve(cls, cfg: TrainConfig, device: torch.device) -> FastPath:
        cuda = device.type == "cuda"
        return cls(
            bf16=cfg.amp == "bf16" or (cfg.amp == "auto" and cuda),
            channels_last=cfg.channels_last == "on" or (cfg.channels_last == "auto" and cuda),
            compile=cfg.compile == "on" or (cfg.compile == "auto" and cuda),
        )

    def autocast(self, device: torch.device) -> torch.autocast:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def prepare_model(self, model: nn.Module) -> None:
        """channels_last weights: the 2-D format for image networks, the 3-D one for video.

        ``Module.to(memory_format=channels_last)`` refuses 5-D convolution weights, so a network
        with any (the 3D ResNets) takes ``channels_last_3d``.
        """
        if not self.channels_last:
            return
        video = any(p.dim() == 5 for p in model.parameters())
        model.to(memory_format=torch.channels_last_3d if video else torch.channels_last)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        if self.channels_last and x.dim() == 5:
            return x.contiguous(memory_format=torch.channels_last_3d)
        return x
