"""Stage ``download``: the dataset exactly as its authors publish it, into ``data/raw/<name>``.

Checksums are verified before anything is unpacked; the output directory is written under a
temporary name and renamed at the end. Run: ``python -m stages.download`` (dvc.yaml does).
"""

from longtail.pipeline import run_stage
from stages import common


def main() -> None:
    cfg = common.config(training=False)
    family = common.family(cfg)
    out = common.raw_dir(cfg)
    print(f"[download] {cfg.data.name} -> {out}")
    family.download(cfg.data, out)


if __name__ == "__main__":
    run_stage(main)
