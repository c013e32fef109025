"""longtail.live: without dvclive, PlainLive writes the files dvclive's ``Live`` writes.

Both loggers get the same calls (nested names, a step set by hand, NaN and infinity, a metric
that starts late, ``end``) and must leave byte-identical trees; ``open_live`` and the stages'
``EpochLogger`` fall back to PlainLive when ``import dvclive`` fails.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from longtail.live import PlainLive, open_live
from longtail.pipeline import EpochLogger


def dvclive_live(directory: Path):
    from dvclive import Live

    return Live(dir=str(directory), dvcyaml=False, save_dvc_exp=False, report=None)


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def calls(live) -> None:
    live.step = 3
    live.log_metric("train/loss", 1.25)
    live.log_metric("val/top1", 0.5)
    live.next_step()
    live.log_metric("train/loss", float("nan"))
    live.log_metric("val/top1", 0.625)
    live.log_metric("lr", 0.1)  # first logged at step 4
    live.next_step()
    live.step = 9
    live.log_metric("train/loss", float("inf"))
    live.next_step()
    live.end()


@pytest.mark.parametrize("script", [calls, lambda live: live.end()], ids=["steps", "empty"])
def test_plain_live_writes_what_dvclive_writes(tmp_path: Path, script: Callable) -> None:
    script(dvclive_live(tmp_path / "dvclive"))
    script(PlainLive(tmp_path / "plain"))
    expected = tree(tmp_path / "dvclive")
    assert expected and tree(tmp_path / "plain") == expected


def test_plain_live_files_hold_the_logged_values(tmp_path: Path) -> None:
    live = PlainLive(tmp_path)
    calls(live)
    assert (tmp_path / "plots/metrics/train/loss.tsv").read_text() == (
        "step\tloss\n3\t1.25\n4\tnan\n9\tinf\n"
    )
    assert (tmp_path / "plots/metrics/lr.tsv").read_text() == "step\tlr\n4\t0.1\n"
    assert (tmp_path / "metrics.json").read_text() == (
        '{\n    "train": {\n        "loss": "inf"\n    },\n    "val": {\n        "top1": 0.625\n'
        '    },\n    "step": 9,\n    "lr": 0.1\n}\n'
    )
    with pytest.raises(TypeError, match="expected an int or a float, got <class 'str'>"):
        live.log_metric("x", "high")


def test_without_dvclive_the_epoch_logger_writes_the_same_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    history = [{"epoch": 0, "train/loss": 2.0, "val/top1": 0.25}, {"epoch": 1, "val/top1": 0.5}]
    with_dvclive = EpochLogger(tmp_path / "a", first_step=5)
    assert type(with_dvclive.live).__module__.startswith("dvclive")
    with_dvclive.replay(history)
    assert with_dvclive.step == 7
    with_dvclive.close()
    monkeypatch.setitem(sys.modules, "dvclive", None)  # import dvclive now raises ImportError
    assert isinstance(open_live(tmp_path / "c"), PlainLive)
    without = EpochLogger(tmp_path / "b", first_step=5)
    assert isinstance(without.live, PlainLive)
    without.replay(history)
    assert without.step == 7
    without.close()
    assert without.step == with_dvclive.step == 6  # end() goes back to the last logged step
    assert tree(tmp_path / "b") == tree(tmp_path / "a")
