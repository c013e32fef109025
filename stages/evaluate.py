"""Stage ``evaluate``: the final network on the balanced ``test`` split.

Writes ``metrics/evaluate.json`` (top-1, many/medium/few-shot in percent, the class count of each
group, mean per-class precision/recall, ECE (of ``softmax(s * logits)`` where a cosine head was
trained with LDAM's scale ``s``), test samples listed ``num_samples`` and scored
``num_scored``: a listed test clip or image that cannot be decoded counts as wrong),
``plots/per_class.csv`` (class, train count, accuracy) and ``plots/confusion.csv``, and prints
the results table. Run: ``python -m stages.evaluate``.
"""

import torch

from longtail import io
from longtail.data.base import class_counts, read_json
from longtail.metrics import confusion_matrix, expected_calibration_error, summarize
from longtail.pipeline import load_model, machine, run_stage, write_plot_csv
from longtail.train import FastPath, predict, resolve_device, set_cpu_threads, set_determinism
from stages import common

NOT_SCORED = "(not scored)"  # the confusion column of test samples that could not be decoded


def main() -> None:
    cfg = common.config()
    device = resolve_device(cfg.device)
    set_determinism(cfg.determinism, device)
    set_cpu_threads(cfg.train.cpu_threads, device)
    model, blob = load_model(common.MODELS / "final.pt", writer="finetune")
    model.to(device)
    test = common.family(cfg).open(common.context(cfg, device), "test")
    fast = FastPath.resolve(cfg.train, device)
    logits, labels = predict(model, test, cfg.train.eval_batch_size, fast, device)
    preds = logits.argmax(1)
    counts = class_counts(common.PREPARED, "train")
    conf = confusion_matrix(preds, labels, len(counts)).cpu()
    # Listed test samples that could not be decoded are scored as wrong, never dropped.
    unscored = getattr(test, "unscored_labels", torch.zeros(0, dtype=torch.int64))
    missed = torch.bincount(unscored, minlength=len(counts))
    result = summarize(conf, counts, cfg.evaluate.many_shot, cfg.evaluate.few_shot, missed)
    # A cosine head's logits are scaled by its loss (LDAM's s): calibrate what it trained.
    scale = float(blob.get("logit_scale", 1.0))
    result["ece"] = expected_calibration_error(torch.softmax(scale * logits, 1), labels)
    result["finetune_mode"] = blob.get("mode", "none")
    result.update(machine(device))  # the CPU model: results move in the last digits across CPUs
    io.write_json(common.METRICS / "evaluate.json", result)
    names = read_json(common.PREPARED / "class_counts.json")["names"]
    acc = conf.diag().double() / (conf.sum(1) + missed).clamp(min=1)
    write_plot_csv(
        common.PLOTS / "per_class.csv",
        [
            {"class": names[c], "train_count": counts[c], "accuracy": round(100 * float(acc[c]), 3)}
            for c in range(len(counts))
        ],
    )
    write_plot_csv(
        common.PLOTS / "confusion.csv",
        [
            {"actual": names[int(a)], "predicted": names[int(p)]}
            for a, p in zip(labels.tolist(), preds.tolist(), strict=True)
        ]
        + [{"actual": names[int(a)], "predicted": NOT_SCORED} for a in unscored.tolist()],
    )
    if len(unscored):
        print(
            f"[evaluate] {result['num_samples']} test samples listed, {result['num_scored']} "
            f"scored: {len(unscored)} could not be decoded and count as wrong"
        )
    print(table(cfg.data.name, result))


def table(name: str, r: dict) -> str:
    """The small results table printed at the end of ``dvc repro``."""
    head = "| dataset | top-1 | many | medium | few | classes (many/medium/few) |"
    rule = "|---|---|---|---|---|---|"
    row = (
        f"| {name} | {r['top1']:.2f} | {r['many']:.2f} | {r['medium']:.2f} | "
        f"{r['few']:.2f} | {r['num_many']}/{r['num_medium']}/{r['num_few']} |"
    )
    return "\n".join(["", head, rule, row, ""])


if __name__ == "__main__":
    run_stage(main)
