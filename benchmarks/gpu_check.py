"""One command that turns a short loan of a GPU into verified facts: tests, pipeline, speed targets.

    python -m benchmarks.gpu_check --out gpu-report                 # one H100/H200, about 8 min
    python -m benchmarks.gpu_check --device cpu --tiny --out /tmp/x # the same sequence, tiny, CPU

Needs nothing beyond the README's install; on a GPU machine that has its own PyTorch and no
package index, ``benchmarks/gpu_loan.sh`` runs it (docs/gpu.md). Runs, in order, each part in its
own process with its own time limit (a part that fails or runs out of time is recorded as such,
and the next one runs; the limits add up to under 8 minutes):

1. ``cuda-tests``: the CUDA test suite, ``pytest -m cuda`` (tests/test_cuda.py, test_cuda_nets.py);
2. ``digits``: the digits-LT pipeline, every stage of dvc.yaml with params.yaml's defaults and
   ``device`` set, in a scratch copy of the repository (``dvc repro``'s commands, run directly);
3. ``train-speed``: ``benchmarks.train_speed`` at the issue's configuration (ResNet-32,
   CIFAR-100-LT IF 100, batch 128): path (a) against the reference-style loop (b), and one real
   200-epoch run of (a); on the CIFAR-100 archive given by ``--archive``, else on synthetic data
   of CIFAR-100-LT's shape;
4. ``determinism``: path (a) again with ``--determinism on``, and its cost against part 3;
5. ``decode``: ``benchmarks.decode_speed``: PIL workers, ``decode_jpeg`` on the device, a uint8
   cache;
6. ``concurrent``: ``benchmarks.concurrent_runs``: N runs at once on one device, memory per run
   per network, the N for ``dvc queue start --jobs N``.

Each part writes a markdown file under ``--out`` with the device, torch version and command; the
logs of every process are kept next to them, and ``--out``/README.md sums up what passed, failed
or ran out of time. ``--bring-back DIR`` copies, after every part, what a loan's 8 returned files
hold into DIR: README.md, the part tables and ``logs.tar.gz`` (all of ``--out``). Nothing here
asserts a speed: BENCHMARKS.md records the tables.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision
import yaml

from benchmarks.speed.report import describe_device
from longtail.train import resolve_device

REPO = Path(__file__).resolve().parents[1]
COPIED = ["longtail", "stages", "params.yaml", "dvc.yaml", "pyproject.toml"]
# Seconds per part on a GPU: 470 s in all, under the 8 minutes a loan often lasts.
LIMITS = {
    "cuda-tests": 140,
    "digits": 75,
    "train-speed": 110,
    "determinism": 55,  # compiles afresh: Inductor's deterministic mode misses the graph cache
    "decode": 20,
    "concurrent": 70,
}
TINY_LIMIT = 600  # per part on the CPU: only a hung part ever reaches it
TINY_SPEED = "--train-images 48 --test-images 16 --batch-size 16 --epochs-measured 1 --repeats 1 "
TINY_SPEED += "--warmup-steps 1 --workers 0 --threads 1"
TINY_DECODE = "--images 6 --source-size 64 --size 32 --batch-size 4 --workers 0 --repeats 1 "
TINY_DECODE += "--threads 1"
# What the parts run besides the stages, for benchmarks.gpu_wheels' scan of the imports.
CUDA_TEST_FILES = ["tests/test_cuda.py", "tests/test_cuda_nets.py", "tests/test_augment.py"]
BENCHMARK_MODULES = [
    "benchmarks.train_speed",
    "benchmarks.decode_speed",
    "benchmarks.concurrent_runs",
]
# --bring-back: README.md and the part tables in this order, then the logs archive; 8 files at most.
RETURNED = ["README.md", "cuda-tests.md", "digits.md", "train-speed.md", "determinism.md"]
RETURNED += ["decode.md", "concurrent.md"]
MAX_RETURNED = 8
LOGS = "logs.tar.gz"
RESULT_LINE = re.compile(r"^(tests/\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)")


@dataclass
class Outcome:
    """What one part did: its status, seconds, the table file and the processes it ran."""

    part: str
    status: str = "not run"
    seconds: float = 0.0
    table: str = "-"
    commands: list[str] = field(default_factory=list)


class Check:
    """The parts, their limits and the output folder of one ``gpu_check`` run."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        self.args, self.device, self.out = args, device, args.out
        self.python = sys.executable
        # The repository first, then what PYTHONPATH already holds (gpu_loan.sh's wheel folder).
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        self.env = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}
        self.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{self.env.get('PATH', '')}"

    def limit(self, part: str) -> float:
        return TINY_LIMIT if self.args.tiny else LIMITS[part] * self.args.time_scale

    def run(
        self, outcome: Outcome, cmd: list[str], deadline: float, log: str, cwd: Path = REPO
    ) -> int | None:
        """Run ``cmd`` until ``deadline``; its output goes to ``log``. None: it ran out of time."""
        outcome.commands.append(shlex.join(cmd))
        with open(self.out / log, "a") as sink:
            sink.write(f"$ {shlex.join(cmd)}\n")
            sink.flush()
            proc = subprocess.Popen(
                cmd, cwd=cwd, env=self.env, stdout=sink, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
            try:
                return proc.wait(timeout=max(deadline - time.monotonic(), 1.0))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the process and its workers, nothing else
                proc.wait()
                sink.write("\n[gpu_check] stopped at the part's time limit\n")
                return None

    def header(self, title: str, commands: Sequence[str]) -> list[str]:
        lines = [
            f"## {title}",
            "",
            f"- device: {describe_device(self.device, torch.get_num_threads())}",
            f"- torch {torch.__version__}, torchvision {torchvision.__version__}, python "
            f"{platform.python_version()}",
        ]
        return lines + [f"- command: `{c}`" for c in commands] + [""]


def status_of(code: int | None, limit: float) -> str:
    if code is None:
        return f"timed out at {limit:.0f} s"
    return "ok" if code == 0 else f"failed (exit {code})"


# ---------------------------------------------------------------------------------- 1. the tests
def cuda_tests(check: Check, outcome: Outcome, deadline: float) -> None:
    cmd = [check.python, "-m", "pytest", "-m", "cuda", "-v", "-rs", "-p", "no:randomly"]
    cmd += CUDA_TEST_FILES
    code = check.run(outcome, cmd, deadline, "cuda-tests.log")
    outcome.status = status_of(code, check.limit("cuda-tests"))
    if code == 5:  # pytest: nothing collected
        outcome.status = "failed (no test collected)"
    log = (check.out / "cuda-tests.log").read_text()
    results = [m.groups() for m in map(RESULT_LINE.match, log.splitlines()) if m]
    skips = sorted({line for line in log.splitlines() if line.startswith("SKIPPED [")})
    counts = {k: sum(r[1] == k for r in results) for k in ("PASSED", "FAILED", "ERROR", "SKIPPED")}
    if check.device.type == "cuda" and code == 0 and counts["PASSED"] == 0:
        outcome.status = "failed (every test skipped on a CUDA device)"
    lines = check.header("CUDA test suite", outcome.commands)
    lines += [
        f"{counts['PASSED']} passed, {counts['FAILED']} failed, {counts['ERROR']} errors, "
        f"{counts['SKIPPED']} skipped ({outcome.status}); the log is cuda-tests.log.",
        "",
        "| test | result |",
        "| --- | --- |",
        *[f"| `{name}` | {result} |" for name, result in results],
    ]
    if skips:
        lines += ["", "Skip reasons:", "", *[f"- {s}" for s in skips]]
    write(check, outcome, "cuda-tests.md", lines)


# ------------------------------------------------------------------------------ 2. digits pipeline
def stage_commands(repo: Path) -> list[tuple[str, list[str]]]:
    """dvc.yaml's stages in file order (its topological order), ``${dist.nproc}`` filled in."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    nproc = yaml.safe_load((repo / "params.yaml").read_text())["dist"]["nproc"]
    commands = []
    for name, stage in stages.items():
        line = stage["cmd"].replace("${dist.nproc}", str(nproc))
        args = shlex.split(line)
        commands.append((name, [sys.executable, *args[1:]] if args[0] == "python" else args))
    return commands


def digits_params(args: argparse.Namespace, params: dict) -> dict:
    params["device"] = args.device
    params["data"]["name"] = "digits"
    if args.tiny:
        for section in ("pretrain", "finetune"):
            params[section].update(epochs=1, warmup_epochs=0)
        params["train"]["log_every_epochs"] = 1
    return params


def digits(check: Check, outcome: Outcome, deadline: float) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        for name in COPIED:
            src, dst = REPO / name, repo / name
            if src.is_dir():
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
        params = yaml.safe_load((repo / "params.yaml").read_text())
        (repo / "params.yaml").write_text(yaml.safe_dump(digits_params(check.args, params)))
        code: int | None = 0
        for name, cmd in stage_commands(repo):
            start = time.perf_counter()
            code = check.run(outcome, cmd, deadline, "digits.log", cwd=repo)
            seconds = time.perf_counter() - start
            rows.append(f"| {name} | {status_of(code, check.limit('digits'))} | {seconds:.1f} |")
            if code != 0:
                break
        outcome.status = status_of(code, check.limit("digits"))
        metrics = repo / "metrics" / "evaluate.json"
        result = yaml.safe_load(metrics.read_text()) if metrics.exists() and code == 0 else {}
    lines = check.header("digits-LT pipeline", [*outcome.commands[:1], "... (every stage)"])
    lines += [
        f"params.yaml's defaults with `device: {check.args.device}`"
        + (", 1 epoch per training stage (tiny)" if check.args.tiny else "")
        + "; the stages' commands from dvc.yaml, run in a scratch copy.",
        "",
        "| stage | result | seconds |",
        "| --- | --- | ---: |",
        *rows,
    ]
    if result:
        keys = ("top1", "many", "medium", "few")
        lines += [
            "",
            "| " + " | ".join(keys) + " |",
            "| " + " | ".join("---:" for _ in keys) + " |",
            "| " + " | ".join(f"{result.get(k, float('nan')):.2f}" for k in keys) + " |",
        ]
    write(check, outcome, "digits.md", lines)


# --------------------------------------------------------------- 3-6. the benchmark command lines
def speed_args(args: argparse.Namespace) -> list[str]:
    if args.tiny:
        return TINY_SPEED.split()
    data = ["--archive", str(args.archive)] if args.archive else []
    return [*data, "--repeats", "3"]


def benchmark(
    module: str, argv: Callable[[argparse.Namespace], list[str]], table: str
) -> Callable[[Check, Outcome, float], None]:
    """A part that runs ``python -m benchmarks.<module>`` and keeps the table it writes."""

    def part(check: Check, outcome: Outcome, deadline: float) -> None:
        out = check.out / table
        cmd = [check.python, "-m", f"benchmarks.{module}", "--device", check.args.device]
        code = check.run(outcome, [*cmd, *argv(check.args), "--out", str(out)], deadline,
                         table.replace(".md", ".log"))  # fmt: skip
        outcome.status = status_of(code, check.limit(outcome.part))
        if out.exists():
            outcome.table = table

    return part


def train_speed_argv(args: argparse.Namespace) -> list[str]:
    full = ["--full-run-epochs", "1" if args.tiny else "200"]
    return [*speed_args(args), *full]


def determinism_argv(args: argparse.Namespace) -> list[str]:
    return [*speed_args(args), "--full-run-epochs", "0", "--determinism", "on"]


def decode_argv(args: argparse.Namespace) -> list[str]:
    if args.tiny:
        return TINY_DECODE.split()
    return ["--images", "512", "--workers", "4", "--repeats", "3"]


def concurrent_argv(args: argparse.Namespace) -> list[str]:
    return (
        ["--tiny", "--jobs", "1", "2", "--epochs", "1"]
        if args.tiny
        else ["--jobs", "1", "2", "4", "8", "--epochs", "1"]
    )


def project_rate(table: Path) -> float | None:
    """The median images/s of path (a) in a train_speed table."""
    if not table.exists():
        return None
    for line in table.read_text().splitlines():
        if line.startswith("| (a) project |"):
            return float(line.split("|")[3].replace(",", ""))
    return None


def determinism_cost(check: Check, outcome: Outcome, deadline: float) -> None:
    benchmark("train_speed", determinism_argv, "determinism-on.md")(check, outcome, deadline)
    off, on = (
        project_rate(check.out / "train-speed.md"),
        project_rate(check.out / "determinism-on.md"),
    )
    lines = check.header("Cost of determinism: true (path (a))", outcome.commands)
    cost = "-" if off is None or on is None else f"{off / on:.2f}×"
    lines += [
        "| determinism | path (a) images/s (median) | table |",
        "| --- | ---: | --- |",
        f"| off | {off if off is not None else 'not measured'} | train-speed.md |",
        f"| on | {on if on is not None else 'not measured'} | determinism-on.md |",
        "",
        f"Slowdown off / on: **{cost}** (two processes one after the other, not interleaved).",
    ]
    write(check, outcome, "determinism.md", lines)


PARTS: dict[str, Callable[[Check, Outcome, float], None]] = {
    "cuda-tests": cuda_tests,
    "digits": digits,
    "train-speed": benchmark("train_speed", train_speed_argv, "train-speed.md"),
    "determinism": determinism_cost,
    "decode": benchmark("decode_speed", decode_argv, "decode.md"),
    "concurrent": benchmark("concurrent_runs", concurrent_argv, "concurrent.md"),
}


# ---------------------------------------------------------------------------------------- report
def write(check: Check, outcome: Outcome, name: str, lines: list[str]) -> None:
    (check.out / name).write_text("\n".join(lines) + "\n")
    outcome.table = name


def summary(check: Check, outcomes: list[Outcome], argv: Sequence[str]) -> str:
    lines = check.header("GPU check", [shlex.join(["python", "-m", "benchmarks.gpu_check", *argv])])
    lines += [
        "| part | result | seconds | limit (s) | table |",
        "| --- | --- | ---: | ---: | --- |",
        *[
            f"| {o.part} | {o.status} | {o.seconds:.0f} | {check.limit(o.part):.0f} | {o.table} |"
            for o in outcomes
        ],
    ]
    return "\n".join(lines) + "\n"


def bring_back(out: Path, dest: Path) -> list[Path]:
    """Copy README.md and the part tables of ``out`` into ``dest``, and all of ``out`` (logs
    included) as ``logs.tar.gz``: at most 8 files, each written whole (a kill leaves the last)."""
    dest.mkdir(parents=True, exist_ok=True)
    tables = [out / name for name in RETURNED if (out / name).is_file()][: MAX_RETURNED - 1]
    for table in tables:
        shutil.copyfile(table, dest / f".{table.name}.part")
        os.replace(dest / f".{table.name}.part", dest / table.name)
    with tarfile.open(dest / f".{LOGS}.part", "w:gz") as tar:
        tar.add(out, arcname="gpu-report")
    os.replace(dest / f".{LOGS}.part", dest / LOGS)
    return [dest / t.name for t in tables] + [dest / LOGS]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--out", type=Path, required=True, help="folder for the tables and logs")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--tiny", action="store_true", help="tiny sizes (the CPU check of the sequence)")
    p.add_argument("--archive", type=Path, default=None, help="CIFAR-100 python archive (part 3)")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    p.add_argument("--time-scale", type=float, default=1.0, help="multiplies every part's limit")
    p.add_argument(
        "--bring-back", type=Path, default=None, metavar="DIR",
        help="after every part, copy README.md, the tables and logs.tar.gz into DIR (8 files)",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.time_scale <= 0:
        p.error(f"--time-scale: expected a number > 0, got {args.time_scale}")
    if args.bring_back is not None and args.bring_back.resolve() == args.out.resolve():
        p.error(f"--bring-back: expected a folder other than --out, got {args.bring_back}")
    return args


def main(argv: Sequence[str] | None = None) -> list[Outcome]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    device = resolve_device(args.device)  # a clear error without a GPU
    args.out.mkdir(parents=True, exist_ok=True)
    check = Check(args, device)
    outcomes = []
    for part in args.parts:
        outcome = Outcome(part)
        start = time.monotonic()
        print(f"[gpu_check] {part} (limit {check.limit(part):.0f} s)", file=sys.stderr, flush=True)
        try:
            PARTS[part](check, outcome, start + check.limit(part))
        except Exception as err:  # one broken part must not cost the others their time
            outcome.status = f"failed ({type(err).__name__}: {str(err)[:100]})"
        outcome.seconds = time.monotonic() - start
        outcomes.append(outcome)
        (args.out / "README.md").write_text(summary(check, outcomes, argv))
        if args.bring_back is not None:
            bring_back(args.out, args.bring_back)
        print(f"[gpu_check] {part}: {outcome.status}", file=sys.stderr, flush=True)
    print((args.out / "README.md").read_text())
    return outcomes


if __name__ == "__main__":
    main()
