"""Stage ``inject_imbalance``: balanced test/val hold-outs, then the long-tailed train split.

Writes ``data/prepared/{train,val,test}.csv``, ``class_counts.json`` and ``dataset.json`` (plus one
uint8 array per split for datasets that fit in memory). Every draw uses ``data.seed``, never the
training ``seed``, so ``dvc exp run -S seed=1`` does not rerun this stage. Run:
``python -m stages.inject_imbalance``.
"""

from longtail.data.base import class_counts
from longtail.io import atomic_dir
from longtail.pipeline import run_stage
from stages import common


def main() -> None:
    cfg = common.config()
    family = common.family(cfg)
    with atomic_dir(common.PREPARED) as tmp:
        family.prepare(cfg.data, cfg.data.seed, common.raw_dir(cfg), tmp)
    counts = {s: class_counts(common.PREPARED, s) for s in ("train", "val", "test")}
    train = counts["train"]
    print(
        f"[inject_imbalance] {cfg.data.name}: {len(train)} classes, train {sum(train)} "
        f"(max {max(train)}, min {min(train)}), val {sum(counts['val'])}, "
        f"test {sum(counts['test'])}"
    )


if __name__ == "__main__":
    run_stage(main)
