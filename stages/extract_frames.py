"""Stage ``extract_frames``: decode every video clip once at the training resolution.

Image datasets write a manifest that says there is nothing to extract. Run:
``python -m stages.extract_frames``.
"""

from longtail.pipeline import run_stage
from stages import common


def main() -> None:
    cfg = common.config(training=False)
    family = common.family(cfg)
    if family.extract is None:
        raise ValueError(f"data.name: {cfg.data.name} has no frame extraction step")
    family.extract(cfg.frames, common.raw_dir(cfg), common.PREPARED, common.FRAMES)
    print(f"[extract_frames] {cfg.data.name}: manifest at {common.FRAMES / 'manifest.json'}")


if __name__ == "__main__":
    run_stage(main)
