"""Stage ``finetune``: fine-tuning or decoupled retraining of the pretrained network.

``finetune.mode`` picks one of ``longtail.decouple.MODES`` (none, full, classifier, tau_norm, lws;
see that module). Writes ``models/final.pt``, ``metrics/finetune.json``, ``dvclive/finetune`` (the
per-epoch curves of the modes that train), ``checkpoints/finetune.ckpt`` and ``plots/finetune/``
(the meta sampler's per-class sampling rates, the τ sweep, the LWS scales, when the mode makes
them). Run: ``python -m stages.finetune``, or ``python -m stages.launch N finetune`` for N
processes through torchrun (what dvc.yaml runs, with ``N = dist.nproc``); only rank 0 writes.
"""

import shutil

from longtail import decouple, io
from longtail.config import to_dict
from longtail.data.base import read_json
from longtail.pipeline import load_model, run_stage, save_model, write_plot_csv
from longtail.train import FastPath
from stages import common

PLOTS = common.PLOTS / "finetune"
PARAM_SECTIONS = ("seed", "determinism", "loss", "finetune", "train", "evaluate")


def main() -> None:
    cfg = common.config()
    device, world = common.start(cfg)
    source = common.MODELS / "pretrain.pt"
    model, blob = load_model(source, writer="pretrain")
    classes = read_json(common.PREPARED / "class_counts.json")
    ctx = common.context(cfg, device)

    def train(
        net, *, loss, sampler, params=None, sampler_options=None, setup=None, train_mode=None
    ) -> dict:
        return common.train_stage(
            "finetune",
            cfg,
            net,
            loss,
            sampler,
            cfg.finetune.optim,
            device,
            inputs=[common.PREPARED, common.FRAMES, source],
            param_sections=PARAM_SECTIONS,
            params=params,
            sampler_options=sampler_options,
            setup=setup,
            train_mode=train_mode,
            world=world,
        )

    job = decouple.Job(
        model=model,
        config=cfg.finetune,
        loss=cfg.loss,
        seed=cfg.seed,
        device=device,
        fast=FastPath.resolve(cfg.train, device),
        eval_batch_size=cfg.train.eval_batch_size,
        train_counts=classes["train"],
        many_shot=cfg.evaluate.many_shot,
        few_shot=cfg.evaluate.few_shot,
        open_split=lambda split: common.family(cfg).open(ctx, split),
        train=train,
        class_names=classes["names"],
    )
    outcome = decouple.run(cfg.finetune.mode, job)
    if world.is_main:
        write_outputs(outcome, cfg.finetune.mode)
        save_model(
            common.MODELS / "final.pt",
            model,
            blob["arch"],
            blob["num_classes"],
            blob["in_channels"],
            to_dict(cfg),
            extra={"mode": cfg.finetune.mode},
        )
        print(f"[finetune] mode {cfg.finetune.mode}: {summary_line(outcome.metrics)}")
    common.finish(world)


def write_outputs(outcome: decouple.Outcome, mode: str) -> None:
    """Metrics, plot tables, and for modes without training the outputs dvc.yaml declares."""
    io.write_json(common.METRICS / "finetune.json", outcome.metrics)
    shutil.rmtree(PLOTS, ignore_errors=True)  # no table of an earlier mode survives
    PLOTS.mkdir(parents=True, exist_ok=True)
    for name, rows in outcome.plots.items():
        write_plot_csv(PLOTS / f"{name}.csv", rows)
    if not outcome.trained:
        live = common.LIVE / "finetune"
        shutil.rmtree(live, ignore_errors=True)
        (live / "plots").mkdir(parents=True)
        # A checkpoint without a signature never resumes; it only marks that nothing trained.
        io.save_torch({"stage": "finetune", "mode": mode}, common.CHECKPOINTS / "finetune.ckpt")


def summary_line(metrics: dict) -> str:
    """The headline numbers of a mode's metrics, e.g. ``epochs 30, tau 1, val/top1 85.5``."""
    keys = ("epochs", "tau", "val/top1", "val/few")
    shown = [f"{k} {metrics[k]:.4g}" for k in keys if isinstance(metrics.get(k), (int, float))]
    return ", ".join(shown) or "no training"


if __name__ == "__main__":
    run_stage(main)
