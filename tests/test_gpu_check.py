"""The GPU check and the command a GPU loan runs, on the CPU.

``benchmarks/gpu_loan.sh --device cpu --tiny`` runs the GPU check's whole sequence (the CUDA suite,
which skips everything on the CPU; the digits pipeline; train_speed; the determinism cost;
decode_speed; concurrent runs) as the loan runs it: in a copy of the tree as a loan sends it (git's
tracked and not-ignored files), with a wheels folder as the only extra, and with Python refusing
dvc, dvclive and every other package the GPU machine lacks (``tests/machine_site``). Every part must
run to its end and bring back its table (device, torch version, command) among at most 8 files.
The pieces that read the tables are checked on fixed text.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check, gpu_wheels
from longtail.config import ConfigError

TABLES = ("cuda-tests.md", "digits.md", "train-speed.md", "determinism.md", "decode.md")
TABLES += ("concurrent.md",)
MACHINE_SITE = Path(__file__).parent / "machine_site"
RETURNABLE = re.compile(r"^[A-Za-z0-9._-]+$")  # the names a loan brings back


def probe_wheel(folder: Path) -> Path:
    """A real one-module wheel, standing in for the wheels gpu_wheels downloads."""
    files = {
        "loanprobe.py": b"VALUE = 1\n",
        "loanprobe-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: loanprobe\n"
        b"Version: 1.0\n",
        "loanprobe-1.0.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    files["loanprobe-1.0.dist-info/RECORD"] = "\n".join(
        [*record, "loanprobe-1.0.dist-info/RECORD,,", ""]
    ).encode()
    folder.mkdir(parents=True)
    wheel = folder / "loanprobe-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return wheel


def machine_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a process that sees only what the GPU machine has (plus the wheels)."""
    lacks = {
        module: dists
        for module, dists in metadata.packages_distributions().items()
        if module not in sys.stdlib_module_names
        and not any(gpu_wheels.normalize(d) in gpu_wheels.MACHINE for d in dists)
    }
    (tmp_path / "lacks.json").write_text(json.dumps(lacks))
    (tmp_path / "tmp").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(
        PYTHONPATH=str(MACHINE_SITE), LONGTAIL_MACHINE_LACKS=str(tmp_path / "lacks.json"),
        GPU_LOAN_SITE=str(tmp_path / "site"), PYTHON=sys.executable, OUT=str(tmp_path / "out"),
        TMPDIR=str(tmp_path / "tmp"),  # the scratch folders of gpu_loan.sh and gpu_check
    )  # fmt: skip
    return env


def test_loan_command_runs_the_tiny_sequence_without_dvc(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    for path in gpu_wheels.travelling_files():
        (tree / path.relative_to(gpu_check.REPO)).parent.mkdir(parents=True, exist_ok=True)
        (tree / path.relative_to(gpu_check.REPO)).write_bytes(path.read_bytes())
    probe_wheel(tree / ".whl")  # the carried folder
    env = machine_env(tmp_path)

    def python(code: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-c", code]
        return subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)

    for module in ("dvclive", "dvc.api"):  # the simulated machine refuses them
        refused = python(f"import {module}")
        assert refused.returncode != 0 and "the GPU machine lacks" in refused.stderr

    proc = subprocess.run(
        ["bash", "benchmarks/gpu_loan.sh", "--device", "cpu", "--tiny"],
        cwd=tree, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[gpu_loan] 1 wheel(s) from .whl" in proc.stdout
    assert (tmp_path / "site" / "loanprobe.py").is_file()

    out = tmp_path / "out"
    returned = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    assert returned == sorted([*gpu_check.RETURNED, gpu_check.LOGS])
    assert len(returned) <= 8 and all(RETURNABLE.match(name) for name in returned)
    assert all((out / name).stat().st_size > 0 for name in returned)
    summary = (out / "README.md").read_text()
    assert "| part | result | seconds | limit (s) | table |" in summary
    assert all(f"| {part} | ok |" in summary for part in gpu_check.PARTS), summary
    for name in TABLES:
        text = (out / name).read_text()
        assert "- device: cpu" in text and f"torch {torch.__version__}" in text
        assert "- command: `" in text
    assert "skipped" in (out / "cuda-tests.md").read_text()
    assert "| top1 | many | medium | few |" in (out / "digits.md").read_text()
    assert "Slowdown off / on: **" in (out / "determinism.md").read_text()
    assert "Recommended: **N = " in (out / "concurrent.md").read_text()
    with tarfile.open(out / gpu_check.LOGS) as archive:
        names = set(archive.getnames())
    assert {"gpu-report/digits.log", "gpu-report/determinism-on.md"} <= names


def test_bring_back_returns_at_most_8_files(tmp_path: Path) -> None:
    out, dest = tmp_path / "report", tmp_path / "back"
    out.mkdir()
    for name in [*gpu_check.RETURNED, "determinism-on.md", "extra.md", "digits.log"]:
        (out / name).write_text(name)
    returned = gpu_check.bring_back(out, dest)
    assert [p.name for p in returned] == [*gpu_check.RETURNED, gpu_check.LOGS]
    assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in returned)
    assert (dest / "digits.md").read_text() == "digits.md"
    with tarfile.open(dest / gpu_check.LOGS) as archive:
        assert archive.extractfile("gpu-report/digits.log").read() == b"digits.log"
    (out / "README.md").unlink()
    assert len(gpu_check.bring_back(out, dest)) == 7  # what a part wrote only


def test_bring_back_must_differ_from_out(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--out", str(tmp_path), "--bring-back", str(tmp_path)])


def test_project_rate_reads_path_a_of_a_train_speed_table(tmp_path: Path) -> None:
    table = tmp_path / "t.md"
    table.write_text("| path | what | images/s |\n| (a) project | x | 12,345 | 1–2 | 3 s |\n")
    assert gpu_check.project_rate(table) == 12_345.0
    assert gpu_check.project_rate(tmp_path / "missing.md") is None


def test_stage_commands_follow_dvc_yaml_with_the_process_count() -> None:
    names = [name for name, _ in gpu_check.stage_commands(gpu_check.REPO)]
    assert names[:2] == ["download", "inject_imbalance"] and names[-1] == "evaluate"
    pretrain = dict(gpu_check.stage_commands(gpu_check.REPO))["pretrain"]
    assert pretrain[1:] == ["-m", "stages.launch", "1", "pretrain"]


def test_cuda_without_a_gpu_is_refused_before_any_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="device: cuda was requested"):
        gpu_check.main(["--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()
