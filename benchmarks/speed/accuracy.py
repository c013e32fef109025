"""``--check-accuracy``: the fast path computes what the exact path computes.

The loss and gradient of one fixed batch under each switch against a float64 reference, three SGD
steps of the project's optimiser against the for-loop implementation, then digits-LT (the default
experiment of params.yaml: pretrain with CE) trained over several seeds on the exact path and on the
fast path, test top-1 as mean ± std.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from benchmarks.speed.project import EXACT_SWITCHES, _on, train_config
from benchmarks.speed.report import header
from benchmarks.speed.workload import NUM_CLASSES, progress, recipe, seeded_resnet32
from longtail import data, losses, samplers
from longtail.config import Config, DataConfig, TrainConfig, load
from longtail.data import base, cifar
from longtail.data.augment import normalize
from longtail.metrics import summarize
from longtail.train import FastPath, Trainer, build_optimizer, evaluate_confusion


# --------------------------------------------------------------------------------- accuracy mode
def exact_config(args: argparse.Namespace) -> TrainConfig:
    return dataclasses.replace(train_config(args), **EXACT_SWITCHES)


def _flat_grads(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.detach().double().flatten() for p in model.parameters()])


def _loss_and_grads(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    fast: FastPath,
    device: torch.device,
    train_mode: bool,
) -> tuple[float, torch.Tensor]:
    """The project's CE (upcast to float32 under bf16) and all gradients, one batch."""
    model.train(train_mode)
    forward = torch.compile(model, dynamic=False) if fast.compile else model
    if fast.channels_last:
        model.to(memory_format=torch.channels_last)
    model.zero_grad(set_to_none=True)
    loss_fn = losses.create("ce", [1] * NUM_CLASSES).to(device)
    with fast.autocast(device):
        logits, features = forward(fast.prepare_input(x))
        loss = loss_fn(logits, y, features)
    loss.backward()
    return loss.item(), _flat_grads(model)


def _variants(args: argparse.Namespace, device: torch.device) -> list[tuple[str, FastPath]]:
    off = FastPath(bf16=False, channels_last=False, compile=False)
    variants = [
        ("exact fp32", off),
        ("channels_last", dataclasses.replace(off, channels_last=True)),
        ("bf16 autocast", dataclasses.replace(off, bf16=True)),
        ("bf16 + channels_last", FastPath(bf16=True, channels_last=True, compile=False)),
    ]
    if args.compile == "on" or (args.compile == "auto" and device.type == "cuda"):
        variants += [
            ("compile (fp32)", dataclasses.replace(off, compile=True)),
            ("compile + bf16 + channels_last", FastPath(True, True, True)),
        ]
    return variants


def fixed_batch_agreement(args: argparse.Namespace, device: torch.device) -> list[str]:
    """Loss and gradients of one fixed batch per switch, relative to a float64 reference.

    Both batch-norm modes are shown: in training mode (as the step runs) the backward pass through
    the batch statistics cancels large terms at initialisation on random data, which magnifies
    every rounding error in the early layers' gradients, fp32's included; in eval mode the same
    network is well conditioned and shows each precision's own error.
    """
    gen = torch.Generator().manual_seed(args.seed)
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, NUM_CLASSES, (64,), generator=gen)
    x = normalize(images, cifar.MEAN, cifar.STD)  # (64, 3, 32, 32) float32
    model = seeded_resnet32(args.seed)
    cpu = torch.device("cpu")
    off = FastPath(bf16=False, channels_last=False, compile=False)
    lines = [
        "| switches | batch norm | loss rel. error vs float64 | gradient rel. error vs float64 "
        "| seconds |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for name, fast in _variants(args, device):
        for train_mode in (True, False):
            ref_model = copy.deepcopy(model).double()
            ref_loss, ref_grads = _loss_and_grads(ref_model, x.double(), y, off, cpu, train_mode)
            start = time.perf_counter()
            net = copy.deepcopy(model).to(device)
            loss, grads = _loss_and_grads(net, x.to(device), y.to(device), fast, device, train_mode)
            seconds = time.perf_counter() - start
            grad_err = float((grads.cpu() - ref_grads).norm() / ref_grads.norm())
            lines.append(
                f"| {name} | {'train' if train_mode else 'eval'} | "
                f"{abs(loss - ref_loss) / abs(ref_loss):.1e} | {grad_err:.1e} | {seconds:.1f} |"
            )
        progress(f"  fixed batch, {name}: done")
    lines += ["", *sgd_agreement(model, x.to(device), y.to(device), device)]
    return lines


def sgd_agreement(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device
) -> list[str]:
    """Three steps of the project's SGD (fused on CUDA, foreach on the CPU) against a for-loop."""
    cfg = recipe(1, len(y))
    results = []
    for make in (
        lambda ps: build_optimizer(ps, cfg, device),
        lambda ps: torch.optim.SGD(
            ps, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, foreach=False
        ),
    ):
        net = copy.deepcopy(model).to(device)
        optimizer = make(list(net.parameters()))
        for _ in range(3):
            optimizer.zero_grad(set_to_none=True)
            logits, _ = net(x)
            nn.functional.cross_entropy(logits, y).backward()
            optimizer.step()
        results.append(torch.cat([p.detach().double().flatten().cpu() for p in net.parameters()]))
    kind = "fused" if device.type == "cuda" else "foreach"
    err = float((results[0] - results[1]).norm() / results[1].norm())
    return [
        f"SGD, 3 steps: {kind} against the for-loop implementation, parameters rel. "
        f"difference {err:.1e}."
    ]


def digits_config(params: Path) -> Config:
    """params.yaml (the default experiment) when present; digits-LT whatever its data section."""
    cfg = load(params) if params.exists() else Config()
    if cfg.data.name != "digits":
        cfg = dataclasses.replace(cfg, data=DataConfig())
    return cfg


def digits_run(
    cfg: Config,
    seed: int,
    train_cfg: TrainConfig,
    epochs: int,
    device: torch.device,
    raw: Path,
    scratch: Path,
) -> dict[str, float]:
    """pretrain (its loss and sampler) on digits-LT prepared with ``seed``; test top-1 and few."""
    family = data.get("digits")
    prepared = scratch / f"prepared-{seed}"
    family.prepare(cfg.data, seed, raw, prepared)
    ctx = base.SourceContext(cfg.data, cfg.frames, raw, prepared, scratch / "frames", device)
    train, val, test = (family.open(ctx, split) for split in base.SPLITS)
    counts = base.class_counts(prepared)
    start = time.perf_counter()
    trainer = Trainer(
        model=seeded_resnet32(seed, len(counts), train.in_channels),
        loss=losses.create(cfg.pretrain.loss.name, counts, **losses.kwargs(cfg.pretrain.loss)),
        sampler=samplers.create(
            cfg.pretrain.sampler, train.labels, seed=seed, num_classes=len(counts)
        ),
        train_source=train,
        val_source=val,
        optim=dataclasses.replace(cfg.pretrain.optim, epochs=epochs),
        train_cfg=train_cfg,
        device=device,
        seed=seed,
        num_classes=len(counts),
        train_counts=counts,
        many_shot=cfg.evaluate.many_shot,
        few_shot=cfg.evaluate.few_shot,
        stage="digits",
        log=lambda line: None,
    )
    trainer.fit()
    conf = evaluate_confusion(
        trainer.model, test, len(counts), train_cfg.eval_batch_size, trainer.fast, device
    )
    summary = summarize(conf, counts, cfg.evaluate.many_shot, cfg.evaluate.few_shot)
    return {"top1": summary["top1"], "few": summary["few"], "seconds": time.perf_counter() - start}


def mean_std(values: Sequence[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {std:.1f}"


def digits_caption(cfg: Config, args: argparse.Namespace) -> str:
    optim = cfg.pretrain.optim
    return (
        f"digits-LT (IF {cfg.data.imbalance:g}), pretrain as params.yaml sets it "
        f"({cfg.pretrain.loss.name}, {cfg.pretrain.sampler} sampler, {args.accuracy_epochs} "
        f"epochs, batch {optim.batch_size}, lr {optim.lr:g}, {optim.schedule}), balanced test "
        f"set, seeds {', '.join(map(str, args.seeds))}:"
    )


def accuracy_table(
    results: dict[str, list[dict[str, float]]], exact: FastPath, fast: FastPath
) -> list[str]:
    lines = [
        "| path | switches | test top-1 per seed (%) | top-1 mean ± std | few-shot mean ± std | "
        "seconds per run (median) |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for name, switches in (("exact", exact), ("fast", fast)):
        top1 = [r["top1"] for r in results[name]]
        few = [r["few"] for r in results[name]]
        seconds = statistics.median(r["seconds"] for r in results[name])
        lines.append(
            f"| {name} | bf16 {_on(switches.bf16)}, channels_last {_on(switches.channels_last)}, "
            f"compile {_on(switches.compile)} | {', '.join(f'{v:.1f}' for v in top1)} | "
            f"{mean_std(top1)} | {mean_std(few)} | {seconds:.1f} |"
        )
    return lines


def run_accuracy(args: argparse.Namespace, argv: Sequence[str], device: torch.device) -> str:
    fast_cfg, exact_cfg = train_config(args), exact_config(args)
    fast = FastPath.resolve(fast_cfg, device)
    if fast == FastPath.resolve(exact_cfg, device):
        raise ValueError(
            f"--check-accuracy: expected at least one fast switch on {device.type} (--amp bf16, "
            "--channels-last on or --compile on); these flags resolve to the exact path"
        )
    cfg = digits_config(args.params)
    lines = header(
        "Fast path against exact path: agreement and digits-LT accuracy", args, argv, device
    )
    lines += [
        "",
        "Loss and gradients of one fixed batch (64 random CIFAR-shaped images, ResNet-32 at "
        "initialisation, 100 classes, the project's CE), each switch against float64 on the CPU:",
        "",
    ]
    lines += fixed_batch_agreement(args, device)
    results: dict[str, list[dict[str, float]]] = {"exact": [], "fast": []}
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        data.get("digits").download(cfg.data, raw)
        for seed in args.seeds:
            for name, train_cfg in (("exact", exact_cfg), ("fast", fast_cfg)):
                out = digits_run(cfg, seed, train_cfg, args.accuracy_epochs, device, raw, Path(tmp))
                results[name].append(out)
                progress(f"  digits-LT seed {seed} {name}: top-1 {out['top1']:.1f} %")
    exact = FastPath.resolve(exact_cfg, device)
    lines += ["", digits_caption(cfg, args), "", *accuracy_table(results, exact, fast)]
    return "\n".join(lines) + "\n"
