"""Stage ``finetune``: fine-tuning or decoupled retraining of the pretrained network.

``finetune.mode`` picks one of ``longtail.modes.MODES`` (one file per mode in that package; see
docs/methods.md): the mode builds the plan that ``longtail.loop`` runs. Writes
``models/final.pt``, ``metrics/finetune.json``, ``dvclive/finetune`` (the per-epoch curves of
the modes that train), ``checkpoints/finetune.ckpt`` and ``plots/finetune/``
(the meta sampler's per-class sampling rates, the τ sweep, the LWS scales, when the mode makes
them), and ``metrics/dvc.yaml``, which declares to ``dvc plots`` the finetune curves (when the
mode trains) and exactly the tables this mode wrote: the top-level dvc.yaml cannot declare a file
that only some modes write without ``dvc plots show`` warning about it in the others. It sits in
``metrics/``, in git with the metrics JSON, because DVC reads no dvc.yaml inside a git-ignored
folder or a stage output. The curves' steps continue after pretrain's epochs. Run:
``python -m stages.finetune``, or ``python -m stages.launch N finetune`` for N processes through
torchrun (what dvc.yaml runs, with ``N = dist.nproc``); only rank 0 writes.
"""

import shutil

import yaml

from longtail import io, loop, losses, modes
from longtail.config import Config, to_dict
from longtail.data.base import read_json
from longtail.nets import heads
from longtail.pipeline import load_model, run_stage, save_model, write_plot_csv
from longtail.train import FastPath
from stages import common

PLOTS = common.PLOTS / "finetune"
PLOTS_DECLARED = common.METRICS / "dvc.yaml"  # the plots of what this mode wrote


def _fresh(blob: dict, source: object) -> None:
    """``finetune.optimizer: fresh``: a new SGD, its momentum at zero, the schedule from step 0."""
    return None


def _continued(blob: dict, source: object) -> dict:
    """``finetune.optimizer: continue``: pretrain's SGD state, schedule position and epochs."""
    if not blob.get("optimizer_state"):
        raise ValueError(
            f"finetune.optimizer: continue expects {source} to hold pretrain's optimiser state; "
            "got a model file without one (rewrite it with dvc repro --force pretrain)"
        )
    return blob["optimizer_state"]


OPTIMIZER_STARTS = {"fresh": _fresh, "continue": _continued}
PARAM_SECTIONS = ("seed", "determinism", "loss", "finetune", "train", "evaluate")
# The DVCLive curves of the finetune stage, declared when the mode trains (paths from PLOTS).
CURVES = {
    "finetune_train_loss": ("train/loss.tsv", "loss"),
    "finetune_val_top1": ("val/top1.tsv", "top1"),
    "finetune_val_few": ("val/few.tsv", "few"),
}
# The plot of each table of ``Outcome.plots`` (name, template, x, y); a table without an entry is
# written, not declared.
TABLES = {
    "meta_sampling": ("meta_sampling_rates", "scatter_logx", "train_count", "class_prob"),
    "tau_norm": ("tau_norm_sweep", "linear", "tau", "mean_class_accuracy"),
    "lws_scales": ("lws_scales", "scatter_logx", "train_count", "scale"),
}


def main() -> None:
    cfg = common.config()
    device, world = common.start(cfg)
    source = common.MODELS / "pretrain.pt"
    model, blob = load_model(source, writer="pretrain")
    classes = read_json(common.PREPARED / "class_counts.json")
    ctx = common.context(cfg, device)
    stage = common.training(
        "finetune",
        cfg,
        device,
        world,
        inputs=[common.PREPARED, common.FRAMES, source],
        param_sections=PARAM_SECTIONS,
        first_step=cfg.pretrain.optim.epochs,  # the curve's steps continue after pretrain's
        carry=OPTIMIZER_STARTS[cfg.finetune.optimizer](blob, source),
    )
    job = modes.Job(
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
        class_names=classes["names"],
    )
    outcome = modes.run(cfg.finetune.mode, job, lambda plan: loop.run(plan, stage))
    if world.is_main:
        classifier = outcome.classifier or blob.get("classifier", "linear")
        write_outputs(outcome, cfg.finetune.mode)
        save_model(
            common.MODELS / "final.pt",
            model,
            blob["arch"],
            blob["num_classes"],
            blob["in_channels"],
            to_dict(cfg),
            extra={"mode": cfg.finetune.mode, "logit_scale": logit_scale(cfg, classifier)},
            classifier=classifier,
        )
        print(f"[finetune] mode {cfg.finetune.mode}: {summary_line(outcome.metrics)}")
    common.finish(world)


def logit_scale(cfg: Config, classifier: str) -> float:
    """What the final network's logits are scaled by in the loss that trained its head (LDAM's
    ``s`` on a cosine head, else 1): ``evaluate`` computes calibration on
    ``softmax(scale * logits)``."""
    spec = modes.get(cfg.finetune.mode).head_loss(cfg)
    if spec is None or not heads.HEADS[classifier].scaled_by_loss:
        return 1.0
    return losses.logit_scale(spec.name, **losses.kwargs(spec))


def write_outputs(outcome: modes.Outcome, mode: str) -> None:
    """Metrics, plot tables, and for modes without training the outputs dvc.yaml declares."""
    io.write_json(common.METRICS / "finetune.json", outcome.metrics)
    shutil.rmtree(PLOTS, ignore_errors=True)  # no table of an earlier mode survives
    PLOTS.mkdir(parents=True, exist_ok=True)
    for name, rows in outcome.plots.items():
        write_plot_csv(PLOTS / f"{name}.csv", rows)
    io.write_text(PLOTS_DECLARED, plots_yaml(outcome, mode))
    if not outcome.trained:
        live = common.LIVE / "finetune"
        shutil.rmtree(live, ignore_errors=True)
        (live / "plots").mkdir(parents=True)
        # A checkpoint without a signature never resumes; it only marks that nothing trained.
        io.save_torch({"stage": "finetune", "mode": mode}, common.CHECKPOINTS / "finetune.ckpt")


def plots_yaml(outcome: modes.Outcome, mode: str) -> str:
    """``metrics/dvc.yaml``: the plots of what this mode wrote (paths relative to ``metrics/``)."""
    up = "../" * len(PLOTS_DECLARED.parent.parts)
    live = up + (common.LIVE / "finetune" / "plots" / "metrics").as_posix()
    plots = []
    if outcome.trained:
        for name, (tsv, column) in CURVES.items():
            curve = {"template": "linear", "x": "step", "y": {f"{live}/{tsv}": column}}
            plots.append({name: curve})
    for name in outcome.plots:
        if name in TABLES:
            plot, template, x, y = TABLES[name]
            table = up + (PLOTS / f"{name}.csv").as_posix()
            plots.append({plot: {"template": template, "x": x, "y": {table: y}}})
    header = (
        f"# Written by the finetune stage (finetune.mode: {mode}): the plots of the finetune\n"
        "# curves and of the tables this mode wrote, for dvc plots show / diff. Commit it with\n"
        "# the metrics JSON; the stage rewrites it.\n"
    )
    return header + yaml.safe_dump({"plots": plots}, sort_keys=False)


def summary_line(metrics: dict) -> str:
    """The headline numbers of a mode's metrics, e.g. ``epochs 30, tau 1, val/top1 85.5``."""
    keys = ("epochs", "tau", "val/top1", "val/few")
    shown = [f"{k} {metrics[k]:.4g}" for k in keys if isinstance(metrics.get(k), (int, float))]
    return ", ".join(shown) or "no training"


if __name__ == "__main__":
    run_stage(main)
