"""Tests of the fast path's equivalence to the exact path, and smoke runs of the speed benchmarks.

The fast switches must compute the same function as the exact fp32 path on a fixed batch:
channels_last and the foreach SGD within fp32 rounding, bf16 autocast within bf16 rounding. The
training loss is compared as the :class:`Trainer` computes it (one step); gradients are compared
with batch norm in eval mode, where the network is well conditioned (in training mode, at
initialisation on random data, the batch-statistics backward cancels large terms and magnifies
every rounding error, fp32's included: see ``benchmarks/train_speed.py --check-accuracy``).
Compiled against eager is measured by that same benchmark, not here: compiling ResNet-32's forward
and backward on a 2-core CPU takes about a minute.

The benchmarks run at tiny size on the CPU and must print both paths; no timing is asserted.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import trainers
from fakes import make_cifar_archive
from PIL import Image

from benchmarks import decode_speed, train_speed
from longtail import losses, nets
from longtail.config import OptimConfig, TrainConfig
from longtail.data.augment import normalize
from longtail.data.base import TensorSource
from longtail.data.imbalance import profile_counts
from longtail.samplers import InstanceSampler
from longtail.train import FastPath, build_optimizer

CPU = torch.device("cpu")
EXACT = TrainConfig(amp="off", channels_last="off", compile="off")
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def random_batch(n: int, classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    return images, torch.randint(0, classes, (n,), generator=gen)


def resnet(seed: int = 0, classes: int = 10) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nets.create("resnet32", classes)


def rel(a: torch.Tensor | float, b: torch.Tensor | float) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).norm() / b.norm())


# ------------------------------------------------------------------------------ the switches
def test_fast_path_is_exact_on_cpu_by_default_and_each_switch_turns_on() -> None:
    assert FastPath.resolve(TrainConfig(), CPU) == FastPath(False, False, False)
    assert FastPath.resolve(TrainConfig(), torch.device("cuda")) == FastPath(True, True, True)
    on = TrainConfig(amp="bf16", channels_last="on", compile="on")
    assert FastPath.resolve(on, CPU) == FastPath(True, True, True)
    assert FastPath.resolve(EXACT, torch.device("cuda")) == FastPath(False, False, False)


def first_step_loss(train_cfg: TrainConfig) -> float:
    """The Trainer's loss of its first step (one batch, one epoch) from a fixed initialisation."""
    images, labels = random_batch(16, 10)
    source = TensorSource(images, labels, mean=MEAN, std=STD, padding=4, flip=True, device=CPU)
    trainer = trainers.make_trainer(
        resnet(),
        source,
        None,
        torch.bincount(labels, minlength=10).tolist(),
        optim=OptimConfig(epochs=1, batch_size=16),
        train_cfg=train_cfg,
        loss=losses.create("ce", [2] * 10),
        sampler=InstanceSampler(labels, seed=0),
    )
    return trainer.train_one_epoch(0)["train/loss"]


def test_trainer_loss_channels_last_equals_exact_within_fp32() -> None:
    exact = first_step_loss(EXACT)
    fast = first_step_loss(TrainConfig(amp="off", channels_last="on", compile="off"))
    assert rel(fast, exact) < 1e-5


def test_trainer_loss_bf16_equals_exact_within_bf16() -> None:
    exact = first_step_loss(EXACT)
    for channels_last in ("off", "on"):
        fast = first_step_loss(TrainConfig(amp="bf16", channels_last=channels_last, compile="off"))
        assert rel(fast, exact) < 1e-2


def loss_and_grads(fast: FastPath) -> tuple[torch.Tensor, torch.Tensor]:
    """CE loss and all gradients of a fixed batch, batch norm in eval mode, under ``fast``."""
    images, labels = random_batch(16, 10, seed=1)
    model = resnet(seed=1).eval()
    if fast.channels_last:
        model.to(memory_format=torch.channels_last)
    with fast.autocast(CPU):
        logits, features = model(fast.prepare_input(normalize(images, MEAN, STD)))
        loss = losses.create("ce", [2] * 10)(logits, labels, features)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    return loss.detach(), grads


def test_gradients_channels_last_equal_exact_within_fp32() -> None:
    loss, grads = loss_and_grads(FastPath(False, False, False))
    loss_cl, grads_cl = loss_and_grads(FastPath(False, True, False))
    assert rel(loss_cl, loss) < 1e-5
    assert rel(grads_cl, grads) < 1e-4


def test_gradients_bf16_equal_exact_within_bf16() -> None:
    loss, grads = loss_and_grads(FastPath(False, False, False))
    loss_bf, grads_bf = loss_and_grads(FastPath(True, True, False))
    assert loss_bf.dtype == torch.float32  # the loss upcasts the bf16 logits
    assert rel(loss_bf, loss) < 1e-2
    assert rel(grads_bf, grads) < 3e-2


def test_foreach_sgd_equals_the_for_loop() -> None:
    images, labels = random_batch(8, 10, seed=2)
    x = normalize(images, MEAN, STD)
    cfg = OptimConfig(lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    results = []
    for make in (
        lambda ps: build_optimizer(ps, cfg, CPU),
        lambda ps: torch.optim.SGD(
            ps, lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True, foreach=False
        ),
    ):
        model = resnet(seed=2)
        optimizer = make(model.parameters())
        for _ in range(3):
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x)[0], labels).backward()
            optimizer.step()
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert build_optimizer(resnet().parameters(), cfg, CPU).defaults["foreach"] is True
    torch.testing.assert_close(results[0], results[1])


# ------------------------------------------------------------------------ train_speed pieces
def test_chunk_plan_whole_epochs_and_fractions() -> None:
    plan = train_speed.chunk_plan
    assert plan(1, 10_847, 128) == train_speed.Chunk(1, None, 10_847)
    assert plan(2, 10_847, 128) == train_speed.Chunk(2, None, 21_694)
    assert plan(0.1, 10_847, 128) == train_speed.Chunk(1, 8, 1_024)  # round(8.47) full batches
    assert plan(0.001, 10_847, 128) == train_speed.Chunk(1, 1, 128)  # at least one batch
    assert plan(0.99, 300, 128) == train_speed.Chunk(1, 2, 256)  # at most the full batches
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="--epochs-measured"):
            plan(bad, 10_847, 128)
    with pytest.raises(ValueError, match="full batch"):
        plan(0.5, 100, 128)


def test_synthetic_data_has_the_cifar100_lt_if100_counts() -> None:
    data = train_speed.synthetic(None, 20, seed=0)
    counts = data.train_counts()
    assert len(data.train_labels) == 10_847 and counts == profile_counts("exp", 500, 100, 100)
    assert counts[0] == 500 and counts[-1] == 5
    assert data.train_images.shape == (10_847, 3, 32, 32) and data.train_images.dtype == np.uint8
    assert data.test_images.shape == (20, 3, 32, 32)
    assert data.test_labels.tolist() == list(range(20))
    thin = train_speed.synthetic(256, 10, seed=0)
    assert len(thin.train_labels) == 256 and thin.train_labels[0] == 0
    assert thin.train_labels[-1] == 99 and (np.diff(thin.train_labels) >= 0).all()


def test_prefix_sampler_shortens_epochs_not_their_length() -> None:
    inner = InstanceSampler(torch.arange(10) % 3, seed=0)
    prefix = train_speed.PrefixSampler(InstanceSampler(torch.arange(10) % 3, seed=0))
    prefix.limit = 4
    assert len(prefix) == 10
    assert prefix.indices().tolist() == inner.indices()[:4].tolist()
    prefix.limit = None
    assert prefix.indices().tolist() == inner.indices().tolist()


def test_reference_dataset_serves_the_images_unchanged() -> None:
    images, labels = random_batch(4, 10, seed=3)
    dataset = train_speed.PilCifar(images.numpy(), labels.numpy(), T.PILToTensor())
    for i in range(4):
        image, label = dataset[i]
        assert torch.equal(image, images[i]) and label == int(labels[i])


def test_archive_goes_through_the_project_prepare(tmp_path: Path) -> None:
    archive = tmp_path / "cifar-100-python.tar.gz"
    make_cifar_archive(archive, kind="cifar100", train_per_class=10, test_per_class=1)
    data = train_speed.from_archive(archive, md5=None, seed=0, imbalance=10)
    assert data.train_counts() == profile_counts("exp", 10, 100, 10)  # n_max = what the fake has
    assert data.test_images.shape == (100, 3, 32, 32) and data.test_images.dtype == np.uint8


def test_mean_std_is_the_sample_standard_deviation() -> None:
    assert train_speed.mean_std([1.0, 2.0, 3.0]) == "2.0 ± 1.0"
    assert train_speed.mean_std([4.0]) == "4.0 ± 0.0"


def test_accuracy_check_refuses_flags_that_resolve_to_the_exact_path() -> None:
    with pytest.raises(ValueError, match="fast switch"):
        train_speed.main(["--device", "cpu", "--check-accuracy", *same_threads()])


# --------------------------------------------------------------------------- benchmark smoke
def same_threads() -> list[str]:
    """``--threads`` as they are: the benchmarks set the process-wide thread count."""
    return ["--threads", str(torch.get_num_threads())]


@pytest.mark.e2e
def test_train_speed_runs_tiny_on_cpu_and_prints_both_paths(tmp_path: Path) -> None:
    out = tmp_path / "fragment.md"
    tiny = "--device cpu --train-images 32 --test-images 16 --batch-size 16 --epochs-measured 1 "
    tiny += "--repeats 1 --warmup-steps 1 --full-run-epochs 1 --workers 0 --compare-exact"
    text = train_speed.main([*tiny.split(), *same_threads(), "--out", str(out)])
    assert out.read_text() == text
    assert "speed does not depend on pixel content" in text
    for row in ("| (a) project |", "| (b) reference |", "| (b) loader only |", "| (a) exact |"):
        line = next(line for line in text.splitlines() if line.startswith(row))
        assert float(line.split("|")[3].replace(",", "")) > 0  # images/s was measured
    assert re.search(r"Speed-up \(a\) / \(b\): \*\*[0-9.]+×\*\*", text)
    assert re.search(r"\(a\) / \(a\) exact: \*\*[0-9.]+×\*\*", text)
    assert "Real run of (a)" in text and "projected from this 1-epoch run" in text


def test_decode_speed_runs_tiny_on_cpu_and_prints_every_method() -> None:
    tiny = "--device cpu --images 6 --source-size 64 --size 32 --batch-size 4 --workers 0 "
    text = decode_speed.main([*(tiny + "--repeats 1").split(), *same_threads()])
    for method in ("pil-dataloader", "decode_jpeg", "uint8-cache"):
        assert f"| {method} |" in text
    assert "not measured (no CUDA device)" in text or torch.cuda.is_available()
    assert "Building the cache" in text


def test_decode_methods_produce_the_same_images(tmp_path: Path) -> None:
    paths = decode_speed.write_synthetic_folder(tmp_path, 5, 80, seed=0)
    pil = torch.stack([decode_speed.PilFolder(paths, 32)[i] for i in range(5)])
    batched = decode_speed.decode_batch(paths, 32, CPU)
    assert pil.shape == batched.shape == (5, 3, 32, 32) and batched.dtype == torch.uint8
    # Same libjpeg-turbo decode; PIL's and torchvision's antialiased bilinear differ by rounding.
    assert int((pil.int() - batched.int()).abs().max()) <= 1
    args = decode_speed.parse_args(["--size", "32", "--batch-size", "2"])
    decode_speed.build_cache(paths, args, CPU, tmp_path / "cache.npy")
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "cache.npy")), batched)


def test_synthetic_jpegs_cycle_through_the_aspect_ratios(tmp_path: Path) -> None:
    paths = decode_speed.write_synthetic_folder(tmp_path, 5, 60, seed=0)
    shapes = []
    for path in paths:
        with Image.open(path) as image:
            shapes.append(image.size)  # (W, H)
    assert shapes == [(60, 45), (45, 60), (60, 40), (40, 60), (60, 60)]
    assert decode_speed.jpeg_files(tmp_path, None) == paths
    assert decode_speed.jpeg_files(tmp_path, 2) == paths[:2]
