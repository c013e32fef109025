"""The image-list families' published facts: list names, class and line counts, md5s, statistics.

One :class:`Spec` per family (ImageNet-LT, Places-LT, iNaturalist 2018): the published list file
names, the backbone of the papers, the normalisation, whether the family jitters colour, the
published class count, line counts, list md5s and per-class histogram summaries, and the defaults
of a generated split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from longtail.data import base

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INAT_MEAN, INAT_STD = (0.466, 0.471, 0.380), (0.195, 0.194, 0.192)  # classifier-balancing's
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
BAD_IMAGES = "bad_images.json"  # in data/prepared: split -> {path: why it does not decode}
MANY_SHOT, FEW_SHOT = 100, 20  # OLTR's many (> 100 train images) and few (< 20) shot classes
DEFAULT_IMAGE_SIZE = 224
JITTER = 0.4  # brightness, contrast and saturation of ColorJitter; hue 0
MISSING_SHOWN = 5
# Where the published lists' md5s and histograms come from: the list files that
# facebookresearch/classifier-balancing (commit f162ade, data/ImageNet_LT, data/Places_LT,
# data/iNaturalist18) and jiawei-ren/BalancedMetaSoftmax-Classification (commit 34a61e4, the same
# paths) ship, byte-identical in both; ImageNet_LT_train.txt and iNaturalist18_train.txt are not
# in either repository, so those two are checked by their histogram summary (OLTR's 1,000 classes,
# 115,846 images, 1,280 to 5 per class; iNaturalist 2018's 8,142 classes, 437,513 images, 1,000 to
# 2 per class).
LIST_SOURCE = "classifier-balancing f162ade / BalancedMetaSoftmax-Classification 34a61e4"


@dataclass(frozen=True)
class Spec:
    """One list-file dataset: its published list names, backbone and input statistics."""

    name: str
    lists: dict[str, str | None]  # split -> default list file under the root (None: none)
    default_arch: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    color_jitter: bool
    classes: int = 0  # published class count
    lines: dict[str, int] | None = None  # split -> line count of the published list file
    # split -> md5 of the published list file, where a reference ships it (:data:`LIST_SOURCE`)
    md5: dict[str, str] = field(default_factory=dict)
    # split -> (classes, images, largest class, smallest class) of the published list
    histogram: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)
    # A generated split: n_max, n_min, val and test images per class of the published one.
    generated: tuple[int, int, int, int] = (1280, 5, 20, 50)


SPECS = {
    s.name: s
    for s in (
        Spec(
            "imagenet_lt",
            {sp: f"ImageNet_LT_{sp}.txt" for sp in base.SPLITS},
            "resnet10",
            IMAGENET_MEAN,
            IMAGENET_STD,
            color_jitter=True,
            classes=1000,
            lines={"train": 115_846, "val": 20_000, "test": 50_000},
            md5={
                "val": "ef44f8e43fbc904809a77216042e7498",
                "test": "5f5f97c738923e877c5c78accce6744f",
            },
            histogram={
                "train": (1000, 115_846, 1280, 5),  # OLTR (Liu et al., CVPR 2019), Sec. 4
                "val": (1000, 20_000, 20, 20),
                "test": (1000, 50_000, 50, 50),
            },
            generated=(1280, 5, 20, 50),
        ),
        Spec(
            "places_lt",
            {sp: f"Places_LT_{sp}.txt" for sp in base.SPLITS},
            "resnet152",
            IMAGENET_MEAN,
            IMAGENET_STD,
            color_jitter=True,
            classes=365,
            lines={"train": 62_500, "val": 7_300, "test": 36_500},
            md5={
                "train": "e7795ab1bf428a89f900854127b1e556",
                "val": "2f6e727cd6c99c7b7fdecc9876875b1b",
                "test": "1347af35b053bd31cf782256306affe7",
            },
            histogram={
                "train": (365, 62_500, 4980, 5),
                "val": (365, 7_300, 20, 20),
                "test": (365, 36_500, 100, 100),
            },
            generated=(4980, 5, 20, 100),
        ),
        Spec(
            "inat2018",
            {"train": "iNaturalist18_train.txt", "val": None, "test": "iNaturalist18_val.txt"},
            "resnet50",
            INAT_MEAN,
            INAT_STD,
            color_jitter=False,
            classes=8_142,
            lines={"train": 437_513, "test": 24_426},  # test: the official iNaturalist18_val.txt
            md5={"test": "b7ed52f3854c157c487cc3be9deb8abf"},
            histogram={
                "train": (8_142, 437_513, 1000, 2),  # iNaturalist 2018 (Van Horn et al.)
                "test": (8_142, 24_426, 3, 3),
            },
            generated=(1000, 2, 0, 3),
        ),
    )
}
