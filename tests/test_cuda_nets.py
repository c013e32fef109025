"""Every registered network on the CUDA fast path: bf16 autocast, channels_last, ``torch.compile``.

For each name in ``longtail.nets``'s registry, one training step's forward and backward as the
Trainer runs it on CUDA (``FastPath`` with every switch on: the weights in channels_last, 3-D for
the video networks; the input in the same format; bf16 autocast; compiled with static shapes), and
the same step eagerly in fp32 under ``determinism: true`` (no op may lack a deterministic kernel).
The ``cpu`` variants run both without compiling (Inductor needs about a minute per graph on a
2-core CPU), at a smaller size and without the two largest networks, so the layout and
determinism branches are proved on every run; the ``cuda`` variants are the GPU check
(``pytest -m cuda``).
"""

from __future__ import annotations

import pytest
import torch
from gpu import CUDA
from torch import nn

from longtail import nets
from longtail.train import FastPath, set_determinism

CLASSES = 5
VIDEO = {"resnext101_3d", "resnet3d_small"}
# Left out on the CPU: ResNeXt-101 3D is too large for a CPU unit test, and ResNet-152 is built of
# ResNet-50's modules, three times deeper (both run on CUDA).
NOT_ON_THE_CPU = {"resnext101_3d", "resnet152"}


def cases() -> list:
    params = []
    for arch in nets.names():
        if arch not in NOT_ON_THE_CPU:
            params.append(pytest.param(arch, "cpu", id=f"{arch}-cpu"))
        params.append(pytest.param(arch, "cuda", id=f"{arch}-cuda", marks=CUDA))
    return params


def batch(arch: str, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    n, side = (4, 64) if device == "cuda" else (2, 32 if arch not in VIDEO else 16)
    shape = (n, 3, 8, side, side) if arch in VIDEO else (n, 3, side, side)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).to(device)
    return x, torch.arange(n, device=device) % CLASSES


def model(arch: str, device: str) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nets.create(arch, CLASSES).to(device).train()


def step(net: nn.Module, forward: nn.Module, fast: FastPath, x: torch.Tensor, y: torch.Tensor):
    """One training forward and backward as the Trainer runs it; returns the loss and gradients."""
    net.zero_grad(set_to_none=True)
    with fast.autocast(x.device):
        logits, features = forward(fast.prepare_input(x))
        loss = nn.functional.cross_entropy(logits.float(), y)
    loss.backward()
    return loss.detach(), logits, features


@pytest.mark.parametrize(("arch", "device"), cases())
def test_fast_path_forward_and_backward(arch: str, device: str) -> None:
    torch._dynamo.reset()
    fast = FastPath(bf16=True, channels_last=True, compile=device == "cuda")
    net = model(arch, device)
    fast.prepare_model(net)
    layout = torch.channels_last_3d if arch in VIDEO else torch.channels_last
    conv = next(p for p in net.parameters() if p.dim() >= 4)
    assert conv.is_contiguous(memory_format=layout)
    forward = torch.compile(net, dynamic=False) if fast.compile else net
    x, y = batch(arch, device)
    loss, logits, features = step(net, forward, fast, x, y)
    assert logits.shape == (len(y), CLASSES) and features.shape[0] == len(y)
    assert logits.dtype == torch.bfloat16  # autocast reached the classifier
    assert bool(loss.isfinite())
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and bool(g.isfinite().all()) for g in grads)
    assert any(bool(g.abs().sum() > 0) for g in grads)


@pytest.mark.parametrize(("arch", "device"), cases())
def test_deterministic_step_raises_nothing_and_repeats(arch: str, device: str) -> None:
    before = torch.are_deterministic_algorithms_enabled()
    set_determinism(True, torch.device(device))
    try:
        exact = FastPath(bf16=False, channels_last=False, compile=False)
        x, y = batch(arch, device)
        grads = []
        for _ in range(2):
            net = model(arch, device)
            step(net, net, exact, x, y)
            grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
        assert torch.equal(grads[0], grads[1])
    finally:
        set_determinism(before, torch.device(device))
        torch.backends.cudnn.benchmark = False
