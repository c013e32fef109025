"""Stage ``pretrain``: representation learning (plain CE by default, or ``pretrain.loss``).

``pretrain.mode: weights`` trains nothing: the network starts from ``model.weights`` and passes
through, scored on ``val`` (``longtail.loop.evaluate_only``).

It does not read the ``loss`` section, so ``dvc exp run -S loss.tau=1.5`` reuses the cached
backbone.
Writes ``models/pretrain.pt``, ``metrics/pretrain.json`` and the per-epoch curves
``dvclive/pretrain``. Run: ``python -m stages.pretrain``, or ``python -m stages.launch N pretrain``
for N processes through torchrun (what dvc.yaml runs, with ``N = dist.nproc``).
"""

import torch

from longtail import loop, nets
from longtail.config import to_dict
from longtail.data.base import class_counts, read_json
from longtail.loop import Plan
from longtail.pipeline import run_stage, save_model
from stages import common

PARAM_SECTIONS = ("seed", "determinism", "data", "frames", "model", "pretrain", "train", "evaluate")


def main() -> None:
    cfg = common.config()
    device, world = common.start(cfg)
    info = read_json(common.PREPARED / "dataset.json")
    num_classes = len(class_counts(common.PREPARED))
    arch = common.arch(cfg)
    torch.manual_seed(cfg.seed)  # the network's initialisation
    model = nets.create(
        arch,
        num_classes,
        in_channels=info["in_channels"],
        classifier=cfg.model.classifier,
        bias_init=cfg.model.bias_init,
    )
    nets.check_input_size(model, arch, common.sample_shape(cfg, device), cfg.data.name)
    if cfg.model.weights:
        print(nets.load_weights(model, cfg.model.weights))
    carry: dict = {}
    stage = common.training(
        "pretrain",
        cfg,
        device,
        world,
        inputs=[common.PREPARED, common.FRAMES],
        param_sections=PARAM_SECTIONS,
        carry_out=carry,
    )
    plan = Plan(net=model, loss=cfg.pretrain.loss, sampler=cfg.pretrain.sampler)
    loop.PRETRAIN_MODES[cfg.pretrain.mode].run(plan, stage)
    if world.is_main:
        path = common.MODELS / "pretrain.pt"
        save_model(
            path,
            model,
            arch,
            num_classes,
            info["in_channels"],
            to_dict(cfg),
            extra={"optimizer_state": carry},  # finetune.optimizer: continue reads it
            classifier=cfg.model.classifier,
        )
    common.finish(world)


if __name__ == "__main__":
    run_stage(main)
