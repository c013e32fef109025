"""ImageNet-LT, Places-LT and iNaturalist 2018: an image root plus list files, decoded per batch.

Sources. The user provides ``data.root`` (the image folder) and list files in the format of OLTR
(Liu et al., CVPR 2019) and classifier-balancing (Kang et al., ICLR 2020): one
``relative/path.jpg label`` per line, paths relative to the root, labels 0-based. Unset
``data.lists.*`` mean the published names under the root: ``ImageNet_LT_{train,val,test}.txt``,
``Places_LT_{train,val,test}.txt``, ``iNaturalist18_{train,val}.txt``. iNaturalist 2018 has no
public test labels, so, as classifier-balancing and the papers that report on it do, its official
val list is the ``test`` split. ``download`` copies no images: it checks that every listed image
exists and pins the list files (and their md5s) in ``data/raw/<name>``.

Checks (``prepare``, i.e. ``inject_imbalance``, before any training): the train, val and test
lists share no image (paths resolved under the root, symlinks followed; the message names both
lists, the number shared and a few paths), so a val list that is really the test list cannot send
test into CDB-CE's weights, the τ sweep or the BALMS meta set; every label is below the published
class count (1,000 / 365 / 8,142; the message names the list); every class has training images
(else the message says which lists the class appears in, or that it appears in none). The class
count is the published one when the lists are the published ones, else the largest label of any
list + 1. A list is published when its file's md5 is the published file's (every list whose file a
reference ships: :data:`LIST_SOURCE`), or, for ImageNet-LT's and iNaturalist's train lists, which
no reference ships, when its per-class histogram has the published classes, images, largest and
smallest class (ImageNet-LT 1,000 / 115,846 / 1,280 / 5, iNaturalist 2018 8,142 / 437,513 /
1,000 / 2). What was checked per list, what was given and the verdict are printed and kept in
``dataset.json`` (``published_lists``; ``lines`` keeps the line counts, ImageNet-LT 115,846 /
20,000 / 50,000, Places-LT 62,500 / 7,300 / 36,500, iNaturalist 2018 437,513 / 24,426). Every
listed image is then decoded once (:mod:`longtail.data.verify`, parallel, cached): an image that
does not decode stops the stage with the list, or with ``data.skip_bad: true`` leaves train and
val; a bad test image stays listed and is scored as wrong (``bad_images.json``).

A val split on iNaturalist 2018. CDB-CE's difficulties, a τ-norm sweep and a val-sourced BALMS meta
set need one, and iNaturalist 2018 publishes none. ``data.val_per_class: k`` carves k images of
every class off the training list (seeded by ``data.seed``); the cost is k × 8,142 training
images (1.9 % of them at k = 1) and, in the tail, half of a two-image class. Its smallest classes
have 2 training images, so k = 1 is the most a carve allows; a carve that would leave a class
without training images is refused. BALMS can instead take its meta set from train
(``finetune.meta_source: train``), at no cost to training. The original BALMS ``main.py`` takes
its meta set from ``val`` there, which for iNaturalist 2018 is the official val list, i.e. the
test set; that is not reproduced.

Generated split. With no list files but a balanced ``root/<class>/<image>`` folder, ``download``
builds an LT split with OLTR's protocol: per-class training counts follow a Pareto distribution
with shape α = ``data.pareto_alpha`` (6), from ``data.n_max`` down to ``data.n_min`` —
:func:`pareto_counts` draws one Pareto value per class, sorts them and maps them affinely onto
[n_min, n_max], so the largest class has exactly n_max images and the smallest n_min — and
:func:`assign_counts` gives these counts to the classes in a seeded random order, so the head is
not simply the first folders. Defaults per family, from the published splits (``n_max → n_min``,
val and test per class): ImageNet-LT 1,280 → 5, 20, 50; Places-LT 4,980 → 5, 20, 100; iNaturalist
2018 1,000 → 2, no val, 3. Evidence that this matches the published split: for 1,000 classes the
median over 200 seeds is 110K training images, 367 classes with more than 100 and 152 with fewer
than 20, against ImageNet-LT's 115.8K, 385 and 136. The balanced test (``data.test_per_class``) and
val (``data.val_per_class``) images are taken from each class first; or, with ``data.test_root``, a
second balanced folder with the same classes, the test set is that folder (all of it, or
``data.test_per_class`` per class), as ImageNet-LT tests on ImageNet's val set. The split is part of
the dataset, not of an experiment: it is drawn with ``data.seed`` (never the training seed),
written as list files into ``data/raw/<name>``, and its totals and many/medium/few-shot class
counts (> 100, 20-100, < 20 training images) are printed.

Loading (``open``): a ``DataLoader`` with ``data.workers`` processes reads the files in the order
the training loop gives, decodes them with ``torchvision.io.decode_image`` (no PIL) and applies the
papers' transforms to uint8 tensors with ``torchvision.transforms.v2.functional``: training
RandomResizedCrop(size) + RandomHorizontalFlip + ColorJitter(0.4, 0.4, 0.4, 0) (iNaturalist: no
jitter, as classifier-balancing; ``pretrain.color_jitter`` / ``finetune.color_jitter`` set another
strength, 0 none as FBL); evaluation Resize(size * 256 / 224) + CenterCrop(size). The
random parameters are drawn with torchvision's algorithms from a per-sample ``torch.Generator``
whose seed is drawn from the ``generator`` passed to ``batches`` (one per position of the order),
so an epoch's augmentation depends only on that generator, not on the number of workers, and no
process-wide RNG is touched. Given the same seed, the output is bit-identical to torchvision's
``v2.Compose`` of the same transforms drawing from the global RNG (tested). Normalisation:
ImageNet mean/std, and iNaturalist's own (classifier-balancing's) for inat2018.

Backbones (``default_arch``): ResNet-10 for ImageNet-LT, ResNet-50 for iNaturalist 2018 (both from
scratch), ResNet-152 for Places-LT, initialised from an ImageNet checkpoint the user provides
through ``model.weights`` (the training stage loads it).

Modules, one job each: :mod:`~longtail.data.imagelist.specs` (published facts),
:mod:`~longtail.data.imagelist.lists` (list files), :mod:`~longtail.data.imagelist.generate` (a
generated OLTR split), :mod:`~longtail.data.imagelist.prepare` (manifests and checks),
:mod:`~longtail.data.imagelist.transforms` and :mod:`~longtail.data.imagelist.source` (loading).
This module registers the three families and re-exports the public names.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from longtail.data import base
from longtail.data.imagelist.generate import (
    assign_counts,
    generate,
    pareto_counts,
    split_balanced_folder,
    split_summary,
)
from longtail.data.imagelist.lists import image_root, list_files, parse_list, pin_lists, write_list
from longtail.data.imagelist.prepare import (
    check_disjoint,
    class_names,
    histogram_summary,
    prepare,
    published_lines,
)
from longtail.data.imagelist.source import FileSource, open_split
from longtail.data.imagelist.specs import (
    BAD_IMAGES,
    DEFAULT_IMAGE_SIZE,
    FEW_SHOT,
    IMAGE_EXTENSIONS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    INAT_MEAN,
    INAT_STD,
    JITTER,
    LIST_SOURCE,
    MANY_SHOT,
    SPECS,
    Spec,
)
from longtail.data.imagelist.transforms import eval_transform, resized_crop_box, train_transform

if TYPE_CHECKING:
    from longtail.config import DataConfig

__all__ = [
    "BAD_IMAGES",
    "DEFAULT_IMAGE_SIZE",
    "FEW_SHOT",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "INAT_MEAN",
    "INAT_STD",
    "JITTER",
    "LIST_SOURCE",
    "MANY_SHOT",
    "SPECS",
    "FileSource",
    "Spec",
    "assign_counts",
    "check_disjoint",
    "class_names",
    "download",
    "eval_transform",
    "histogram_summary",
    "open_split",
    "pareto_counts",
    "parse_list",
    "prepare",
    "published_lines",
    "resized_crop_box",
    "split_balanced_folder",
    "split_summary",
    "train_transform",
    "write_list",
]


def download(cfg: DataConfig, raw_dir: Path) -> None:
    """Check the images of the list files (or generate an LT split) and pin the lists in raw_dir."""
    spec = SPECS[cfg.name]
    root = image_root(cfg)
    files = list_files(cfg, spec, root)
    if files is None:
        generate(cfg, spec, root, raw_dir)
    else:
        pin_lists(cfg, root, files, raw_dir)


def _extractor(name: str) -> Callable[[object, Path, Path, Path], None]:
    def extract(frames_cfg: object, raw_dir: Path, prepared_dir: Path, frames_dir: Path) -> None:
        """Images need no frame extraction; record that explicitly."""
        base.write_nothing_to_extract(frames_dir, name)

    return extract


for _spec in SPECS.values():
    base.register(
        base.Family(
            name=_spec.name,
            kind="image",
            default_arch=_spec.default_arch,
            download=download,
            prepare=prepare,
            extract=_extractor(_spec.name),
            open=open_split,
        )
    )
