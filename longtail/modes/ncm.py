"""``finetune.mode: ncm``: the nearest-class-mean classifier of Kang et al., "Decoupling
Representation and Classifier for Long-Tailed Recognition", ICLR 2020 (Sec. 4, "NCM"), on the
frozen pretrained backbone.

No training. The backbone runs in eval mode over every ``train`` image without augmentation
(classifier-balancing's ``train_plain`` split: the training images under the test transform;
``run_networks.py``, ``get_knncentroids``); each feature is L2-normalised; the class mean of the
normalised features is the class's vector; an image scores ``cos(f, m_c)`` against each class
mean. The final network is the backbone under a ``cosine`` head (``longtail.nets.heads``) whose
class vectors are the means, so ``models/final.pt`` scores exactly that and ``evaluate`` reads it
as any network; its logits, cosines in [-1, 1], are not rescaled for calibration (no loss trained
them). A class without training images gets a zero vector (cosine 0 for every image).

Differences from the reference, on purpose (the paper's definition, Sec. 4: "cosine similarity
... on L2 normalized mean features", is what is implemented):

- The reference's command (``main.py --test --knn``) defaults to ``feat_type: cl2n`` and
  ``dist_type: l2``: features centred by the mean training feature before normalising, and
  scores ``-||x - m_c||^2`` against un-normalised means (``models/KNNClassifier.py``). Here
  features are not centred, and the score is the cosine.
- Its ``dist_type: cos`` scores ``x · m_c / D`` with the un-normalised class mean, which ranks
  classes by ``||m_c|| cos(x, m_c)``; here the class means are normalised too (a true cosine).

When the finetune ``val`` split is not empty its scores are reported (``val/*``); they choose
nothing.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from longtail.config import Config, LossConfig
from longtail.decouple import FrozenFeatures, frozen_backbone
from longtail.loop import Plan
from longtail.metrics import confusion_matrix, summarize
from longtail.modes import Job, Mode, Outcome, register
from longtail.nets import heads

HEAD = "cosine"  # the head whose logits are cos(f, w_c): the final network's classifier


def class_means(features: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """(C, D) mean of the L2-normalised ``features`` (N, D) of each class; zeros for a class
    without images."""
    unit = F.normalize(features.double(), dim=1)  # (N, D)
    sums = torch.zeros(num_classes, unit.shape[1], dtype=unit.dtype, device=unit.device)
    sums.index_add_(0, labels.to(unit.device), unit)
    counts = torch.bincount(labels.to(unit.device), minlength=num_classes).clamp_min(1)
    return (sums / counts[:, None]).to(features.dtype)


@register
class NCM(Mode):
    """Nearest class mean: the cosine to each class's mean normalised training feature."""

    summary = "cosine to each class's mean normalised training feature, no training"

    name = "ncm"
    reads_sampler = False

    def trains(self, cfg: Config) -> bool:
        return False

    def head_loss(self, cfg: Config) -> LossConfig | None:
        return None  # no loss trained the class means: the cosines are not rescaled

    def plan(self, job: Job) -> Plan | None:
        return None

    def finish(self, job: Job, plan: Plan | None, summary: dict[str, Any]) -> Outcome:
        backbone = frozen_backbone(job)
        kw = {"augment": False, "batch_size": job.eval_batch_size, "fast": job.fast}
        generator = torch.Generator(device=job.device)
        train = FrozenFeatures(job.open_split("train"), backbone, **kw)
        features, labels = train.cached(generator)
        means = class_means(features, labels, len(job.train_counts))  # (C, D)
        fc = backbone.fc
        head = heads.HEADS[HEAD](fc.in_features, fc.out_features, generator=torch.Generator())
        with torch.no_grad():
            head.weight.copy_(means.to(head.weight.dtype))
        backbone.fc = head.to(fc.weight.device).requires_grad_(False)
        metrics: dict[str, Any] = {"mode": self.name, "epochs": 0, "train_images": len(labels)}
        val = job.open_split("val")
        if len(val) > 0:
            val_features, val_labels = FrozenFeatures(val, backbone, **kw).cached(generator)
            with torch.no_grad():
                predictions = head(val_features).argmax(1)
            conf = confusion_matrix(predictions, val_labels, len(job.train_counts))
            s = summarize(conf, job.train_counts, job.many_shot, job.few_shot)
            keys = ("top1", "mean_class_accuracy", "many", "medium", "few")
            metrics.update({f"val/{k}": s[k] for k in keys})
        return Outcome(metrics, classifier=HEAD)
