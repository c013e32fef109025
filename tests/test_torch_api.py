"""benchmarks.torch_api: the dotted torch/torchvision names a source uses, looked up in torch.

Checked on a source written here: aliases (``F``, ``nn``, names taken with ``from``) resolve to
their full names, and a name the installed torch lacks is reported with its file and line.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import torch_api

SOURCE = """
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.io import decode_jpeg
def f(x):
    if torch.cuda.is_available():
        return F.cross_entropy(x, x) + nn.Linear(2, 2).weight.sum()
    return torch.no_such_function_anywhere(x)
"""


def test_names_used_resolves_aliases_to_full_names() -> None:
    names = {name for _, name in torch_api.names_used(SOURCE)}
    assert {"torch", "torch.nn.functional", "torch.nn", "torchvision.io.decode_jpeg"} <= names
    assert {"torch.cuda.is_available", "torch.nn.functional.cross_entropy"} <= names
    assert {"torch.nn.Linear", "torch.no_such_function_anywhere"} <= names
    assert not any(n.startswith("x.") for n in names)


@pytest.mark.parametrize(
    ("name", "found"),
    [
        ("torch.nn.functional.cross_entropy", True),
        ("torchvision.io.decode_jpeg", True),
        ("torch.distributed.all_reduce", True),  # a submodule reached through its package
        ("torch.no_such_function_anywhere", False),
        ("torch.nn.functional.no_such_loss", False),
    ],
)
def test_exists_looks_names_up_in_the_installed_packages(name: str, found: bool) -> None:
    assert torch_api.exists(name) is found


def test_missing_names_file_and_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch_api, "REPO", tmp_path)
    (tmp_path / "m.py").write_text(SOURCE)
    assert torch_api.missing([tmp_path / "m.py"]) == ["m.py:9 torch.no_such_function_anywhere"]
