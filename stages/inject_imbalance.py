"""Stage ``inject_imbalance``: balanced test/val hold-outs, then the long-tailed train split.

Writes ``data/prepared/{train,val,test}.csv``, ``class_counts.json`` and ``dataset.json`` (plus one
uint8 array per split for datasets that fit in memory). Every draw uses ``data.seed``, never the
training ``seed``, so ``dvc exp run -S seed=1`` does not rerun this stage. Run:
``python -m stages.inject_imbalance``.
"""

from pathlib import Path

from longtail.config import Config
from longtail.data import frames
from longtail.data.base import class_counts, read_json
from longtail.io import atomic_dir, write_json
from longtail.pipeline import run_stage
from stages import common


def main() -> None:
    cfg = common.config(training=False)
    family = common.family(cfg)
    with atomic_dir(common.PREPARED) as tmp:
        family.prepare(cfg.data, cfg.data.seed, common.raw_dir(cfg), tmp)
        record_frames(cfg, tmp)
        check_val(cfg, sum(class_counts(tmp, "val")))  # fail here, not after pretraining
    counts = {s: class_counts(common.PREPARED, s) for s in ("train", "val", "test")}
    train = counts["train"]
    print(
        f"[inject_imbalance] {cfg.data.name}: {len(train)} classes, train {sum(train)} "
        f"(max {max(train)}, min {min(train)}), val {sum(counts['val'])}, "
        f"test {sum(counts['test'])}"
    )


def record_frames(cfg: Config, prepared: Path) -> None:
    """Video datasets: the frame size and segments the run uses (null params resolved)."""
    info = read_json(prepared / "dataset.json")
    if info.get("kind") == "video":
        write_json(
            prepared / "dataset.json", {**info, "frames": frames.used(cfg.frames, info["family"])}
        )


def check_val(cfg: Config, val_size: int) -> None:
    """Refuse an empty val split when a param needs one (see ``common.val_needed_by``)."""
    needs = common.val_needed_by(cfg) if val_size == 0 else []  # (which imports the losses)
    if needs:
        raise ValueError(
            f"data.val_per_class: {', '.join(needs)} needs a val split; {cfg.data.name} has none "
            f"at data.val_per_class {cfg.data.val_per_class}: expected data.val_per_class > 0 "
            f"(CDB-CE: 25 with data.subset: cdb), or a loss and finetune mode that need no val "
            f"(BALMS on CIFAR: finetune.meta_source: train)"
        )


if __name__ == "__main__":
    run_stage(main)
