"""AutoAugment (CIFAR-10 policy) + Cutout: the batched device path against a DataLoader path.

Both produce the BALMS CIFAR training augmentation (RandomCrop(32, padding=4), horizontal flip,
AutoAugment with torchvision's CIFAR-10 policy, one 16×16 Cutout hole) on uint8 CIFAR-sized
images, one independent draw per image:

``batched``
    ``longtail.data.augment.AutoAugmentCutout`` on whole batches held on ``--device`` (what
    ``TensorSource`` runs with ``policy: autoaugment_cutout``).
``dataloader``
    The reference repositories' shape: a ``torch.utils.data.DataLoader`` with ``--workers`` worker
    processes applying torchvision's per-image transforms (``RandomCrop``, ``RandomHorizontalFlip``,
    ``AutoAugment(CIFAR10)`` on uint8 tensors, and a per-image Cutout), batches then moved to the
    device. (The reference applies the policy to PIL images; the tensor transforms are
    torchvision's equivalent on the data this project keeps.)

Each method augments ``--images`` random images in batches of ``--batch``; the repeats are
interleaved and the median is reported, in images per second.

Run (from the repository root):
    python -m benchmarks.autoaugment_speed --device cpu --images 4096 --workers 2 --repeats 3

The batched path runs ``--threads`` intra-op threads (default 1: on a shared machine an OpenMP team
of two waits at barriers; the DataLoader workers run one thread each).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from longtail.data.augment import AutoAugmentCutout


class PerImage(Dataset):
    """uint8 images through torchvision's per-image transforms plus Cutout (BALMS's order)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images
        self.transform = transforms.Compose(
            [
                transforms.RandomCrop(32, padding=4),
                transforms.RandomHorizontalFlip(),
                transforms.AutoAugment(transforms.AutoAugmentPolicy.CIFAR10),
            ]
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        img = self.transform(self.images[i])
        y, x = torch.randint(0, 32, (2,)).tolist()
        img = img.clone()
        img[:, max(y - 8, 0) : min(y + 8, 32), max(x - 8, 0) : min(x + 8, 32)] = 0
        return img


def run_batched(images: torch.Tensor, batch: int, device: torch.device) -> float:
    policy = AutoAugmentCutout(padding=4, flip=True)
    data = images.to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    start = time.perf_counter()
    for chunk in data.split(batch):
        out = policy(chunk, gen)
    if device.type == "cuda":
        torch.cuda.synchronize()
    assert out.dtype == torch.uint8
    return time.perf_counter() - start


def run_dataloader(images: torch.Tensor, batch: int, device: torch.device, workers: int) -> float:
    loader = DataLoader(
        PerImage(images), batch_size=batch, shuffle=False, num_workers=workers,
        persistent_workers=False,
    )  # fmt: skip
    start = time.perf_counter()
    for out in loader:
        out = out.to(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=1, help="intra-op threads of the batched path"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # DataLoader workers run one thread each
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), generator=gen, dtype=torch.uint8)
    times: dict[str, list[float]] = {"batched": [], "dataloader": []}
    for r in range(args.repeats):
        order = ["batched", "dataloader"] if r % 2 == 0 else ["dataloader", "batched"]
        for name in order:
            if name == "batched":
                times[name].append(run_batched(images, args.batch, device))
            else:
                times[name].append(run_dataloader(images, args.batch, device, args.workers))
    print(f"device {device}, torch {torch.__version__}, {args.images} images 32x32, batch "
          f"{args.batch}, dataloader workers {args.workers}, batched threads {args.threads}, "
          f"median of {args.repeats}")  # fmt: skip
    print("| path | seconds | images/s |")
    print("| --- | --- | --- |")
    for name, values in times.items():
        seconds = statistics.median(values)
        print(f"| {name} | {seconds:.2f} | {args.images / seconds:,.0f} |")


if __name__ == "__main__":
    main()
