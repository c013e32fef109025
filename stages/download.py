"""Stage ``download``: the dataset exactly as its authors publish it, into ``data/raw/<name>``.

Checksums are verified before anything is unpacked; the output directory is written under a
temporary name and renamed at the end. A video dataset's split files are checked against the clips
on disk: missing ones are named here, before any decoding (``frames.skip_bad`` lets them through).
Run: ``python -m stages.download`` (dvc.yaml does).
"""

from longtail.pipeline import run_stage
from stages import common


def main() -> None:
    cfg = common.config(training=False)
    family = common.family(cfg)
    out = common.raw_dir(cfg)
    print(f"[download] {cfg.data.name} -> {out}")
    family.download(cfg.data, out)
    if family.kind == "video":
        from longtail.data import video  # the video families import torch: only for them

        video.check_listed_clips(out, skip_bad=cfg.frames.skip_bad)


if __name__ == "__main__":
    run_stage(main)
