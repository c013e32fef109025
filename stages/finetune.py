"""Stage ``finetune``: loss-specific fine-tuning of the pretrained network (``finetune.mode``).

``full`` fine-tunes every layer with ``loss`` and ``finetune.sampler``; ``none`` passes the backbone
through (the papers' end-to-end recipes train in ``pretrain`` with ``pretrain.loss``). Writes
``models/final.pt``, ``metrics/finetune.json`` and ``dvclive/finetune``. Run:
``python -m stages.finetune``.
"""

import shutil

from longtail import io
from longtail.config import to_dict
from longtail.pipeline import load_model, run_stage, save_model
from longtail.train import resolve_device, set_determinism
from stages import common


def main() -> None:
    cfg = common.config()
    device = resolve_device(cfg.device)
    set_determinism(cfg.determinism, device)
    source = common.MODELS / "pretrain.pt"
    model, blob = load_model(source)
    mode = cfg.finetune.mode
    if mode == "none":
        shutil.copyfile(source, common.MODELS / "final.pt.tmp")
        (common.MODELS / "final.pt.tmp").replace(common.MODELS / "final.pt")
        io.write_json(common.METRICS / "finetune.json", {"mode": "none", "epochs": 0})
        (common.LIVE / "finetune").mkdir(parents=True, exist_ok=True)
        print("[finetune] mode none: the pretrained network is the final one")
        return
    common.train_stage(
        "finetune",
        cfg,
        model,
        cfg.loss,
        cfg.finetune.sampler,
        cfg.finetune.optim,
        device,
        inputs=[common.PREPARED, common.FRAMES, source],
        param_sections=("seed", "determinism", "loss", "finetune", "train", "evaluate"),
    )
    save_model(
        common.MODELS / "final.pt",
        model,
        blob["arch"],
        blob["num_classes"],
        blob["in_channels"],
        to_dict(cfg),
        extra={"mode": mode},
    )


if __name__ == "__main__":
    run_stage(main)
