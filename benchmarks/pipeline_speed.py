"""Wall clock of the default ``dvc repro``, stage by stage, as a newcomer runs it.

Copies the tracked project files (the paths of ``git ls-files``) into a fresh temporary git
repository, runs ``dvc repro`` there ``--repeats`` times (``--force`` after the first, and the
training checkpoints removed, so every repeat runs all six stages from scratch), and prints one
row per stage: the seconds from DVC's "Running stage" line to the next one (so a row includes
DVC's own bookkeeping around the stage), with the minimum and median over repeats, and the CPU
seconds of the whole run (user + system of every process: close to an idle machine's wall clock
with one training thread, and far less sensitive than the wall clock to other jobs on a shared
machine). A second column times the
Python imports of each stage module alone (``python -c "import stages.<name>"``, same repeats):
the fixed cost every stage pays before its first line of work. The CPU model and the thread
settings are printed with the table.

Run (from the repository root, with the project's ``dvc`` and ``python`` first on PATH):
    python -m benchmarks.pipeline_speed
    python -m benchmarks.pipeline_speed --repeats 3 --set train.cpu_threads=2

Nothing here asserts a number; docs/speed.md quotes the table with its command and machine.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from longtail import pipeline

STAGES = ("download", "inject_imbalance", "extract_frames", "pretrain", "finetune", "evaluate")
RUNNING = re.compile(r"Running stage '([^']+)'")


def cpu_model() -> str:
    """The CPU model name as ``lscpu`` reports it, and the logical CPU count."""
    return f"{pipeline.cpu_model()}, {os.cpu_count()} logical CPUs"


def copy_project(src: Path, dst: Path) -> None:
    """The tracked files of ``src`` into a fresh git repository at ``dst`` (one commit)."""
    files = subprocess.run(
        ["git", "ls-files"], cwd=src, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        if (src / name).is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / name, dst / name)
    for cmd in (
        ["git", "init", "-q", "-b", "main"],
        ["git", "add", "-A"],
        ["git", "-c", "user.email=b@example.com", "-c", "user.name=b", "commit", "-qm", "x"],
    ):
        subprocess.run(cmd, cwd=dst, check=True, capture_output=True)


def set_params(root: Path, assignments: list[str]) -> None:
    """Apply ``key.sub=value`` assignments to ``root/params.yaml`` (values parsed as YAML)."""
    path = root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for item in assignments:
        key, value = item.split("=", 1)
        *parents, last = key.split(".")
        node = params
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(value)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def children_cpu() -> float:
    """User + system CPU seconds of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def repro(root: Path, env: dict[str, str], force: bool) -> tuple[float, float, dict[str, float]]:
    """One ``dvc repro``: wall and CPU seconds, and the wall seconds of each stage.

    CPU seconds (user + system of every process it ran) hardly move with other jobs on the
    machine; with one training thread they are close to the wall clock of an idle machine.
    """
    cmd = ["dvc", "repro", *(["--force"] if force else [])]
    cpu0 = children_cpu()
    start = time.perf_counter()
    marks: list[tuple[str, float]] = []
    proc = subprocess.Popen(
        cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        found = RUNNING.search(line)
        if found:
            marks.append((found.group(1), time.perf_counter()))
    if proc.wait() != 0:
        raise SystemExit("dvc repro failed:\n" + "".join(lines[-30:]))
    end = time.perf_counter()
    stages = {}
    for (name, t0), (_, t1) in zip(marks, [*marks[1:], ("end", end)], strict=True):
        stages[name] = t1 - t0
    return end - start, children_cpu() - cpu0, stages


def import_seconds(root: Path, env: dict[str, str], stage: str) -> float:
    """Wall seconds of a fresh interpreter that imports ``stages.<stage>`` and exits."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import stages.{stage}"], cwd=root, env=env, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--set", action="append", default=[], help="params.yaml assignment key=value"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary repository")
    args = parser.parse_args()

    src = Path(__file__).resolve().parents[1]
    root = Path(tempfile.mkdtemp(prefix="longtail-bench-"))
    try:
        copy_project(src, root)
        set_params(root, args.set)
        env = dict(os.environ, DVC_NO_ANALYTICS="1", PYTHONPATH=str(root))
        totals, cpus = [], []
        per_stage, imports = {s: [] for s in STAGES}, {s: [] for s in STAGES}
        for i in range(args.repeats):
            # Checkpoints are not DVC outputs: a finished one would make a forced repeat resume
            # with nothing to train. Each repeat starts as a fresh clone does.
            shutil.rmtree(root / "checkpoints", ignore_errors=True)
            total, cpu, stages = repro(root, env, force=i > 0)
            totals.append(total)
            cpus.append(cpu)
            for name, seconds in stages.items():
                per_stage.setdefault(name, []).append(seconds)
            for name in STAGES:
                imports[name].append(import_seconds(root, env, name))
        threads = os.environ.get("OMP_NUM_THREADS", "unset")
        print(f"CPU: {cpu_model()}; OMP_NUM_THREADS={threads}; params set: {args.set or 'none'}")
        command = ["python", "-m", "benchmarks.pipeline_speed", *sys.argv[1:]]
        print(f"command: {' '.join(command)}")
        print(f"dvc repro, {args.repeats} repeats (seconds, min / median)\n")
        print("| stage | dvc repro | import alone |")
        print("| --- | --- | --- |")
        for name in STAGES:
            got, imp = per_stage.get(name, []), imports[name]
            cell = f"{min(got):.1f} / {statistics.median(got):.1f}" if got else "skipped"
            print(f"| {name} | {cell} | {min(imp):.2f} / {statistics.median(imp):.2f} |")
        print(f"| **total** | {min(totals):.1f} / {statistics.median(totals):.1f} | |")
        print(f"| CPU seconds of dvc repro | {min(cpus):.1f} / {statistics.median(cpus):.1f} | |")
        print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
