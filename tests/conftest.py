"""Shared pytest fixtures: a throw-away copy of the repository for end-to-end stage runs, the
digits data stages run once per test process, the digits pipeline reproduced through DVC once per
session (for the DVC tests that start from a reproduced workspace), stages run in-process, and the
two lanes of the suite.

A test is end-to-end (``e2e`` marker) when it starts a process: a stage, DVC, torchrun, git, a
python subprocess. The everyday lane is ``pytest -m "not e2e"``. Tests are marked by a rule
(:func:`pytest_collection_modifyitems`): a test whose own code or whose fixtures build a copy of
the repository or call :mod:`subprocess` is e2e; the rest is marked by hand where a rule cannot
see it. :func:`_no_process_outside_e2e` makes the marking a check: a test outside the marker that
starts a process fails and names the marker."""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from filelock import FileLock

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TRACKED = [
    "longtail",
    "stages",
    "params.yaml",
    "dvc.yaml",
    "pyproject.toml",
    ".dvc/config",
    ".dvc/.gitignore",
    ".dvc/plots",
    ".dvcignore",
    ".gitignore",
]

# Tiny training settings that keep end-to-end runs to seconds on a 2-core CPU.
TINY = {
    "pretrain": {"epochs": 2, "warmup_epochs": 0, "batch_size": 64},
    "finetune": {"epochs": 2, "batch_size": 64},
    "train": {"log_every_epochs": 1},
}


def merge(base: dict, update: dict) -> dict:
    """Recursive dict update (returns a new dict)."""
    out = dict(base)
    for key, value in update.items():
        out[key] = (
            merge(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


class Repo:
    """A copy of the repository in a temp dir, with helpers to run stages and DVC in it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONPATH"] = str(self.root)
        env["DVC_NO_ANALYTICS"] = "1"
        env["OMP_NUM_THREADS"] = "1"  # the test machine is small and shared
        env.pop("LONGTAIL_TRACEBACK", None)
        return env

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            list(args), cwd=self.root, env=self.env(), capture_output=True, text=True
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def stage(self, name: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(sys.executable, "-m", f"stages.{name}", check=check)

    def dvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(str(BIN / "dvc"), *args, check=check)

    def params(self, update: dict) -> None:
        path = self.root / "params.yaml"
        path.write_text(
            yaml.safe_dump(merge(yaml.safe_load(path.read_text()), update), sort_keys=False)
        )


@pytest.fixture(scope="session", autouse=True)
def _own_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Each test process (one per xdist worker) keeps its verified downloads and verify passes in
    its own folder: the user's ``~/.cache/longtail`` is never written, and two workers never
    share a cache file."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LONGTAIL_CACHE", str(tmp_path_factory.mktemp("longtail-cache")))
        yield


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """Tiny tensors run faster on one thread, and the CI machine has two shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def copy_repo(src: Path, dst: Path, names: list[str]) -> Repo:
    """Copy the ``names`` (files or folders) that exist under ``src`` into ``dst``."""
    for name in names:
        if (src / name).is_dir():
            shutil.copytree(src / name, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif (src / name).exists():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / name, dst / name)
    return Repo(dst)


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    """A copy of the tracked project files with tiny training params."""
    r = copy_repo(REPO, tmp_path / "repo", TRACKED)
    r.params(TINY)
    return r


# The stages in dvc.yaml's order; the first three prepare the data.
STAGES = ("download", "inject_imbalance", "extract_frames", "pretrain", "finetune", "evaluate")
DATA_STAGES = STAGES[:3]


def run_stages(repo: Repo, names: Iterable[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the stages ``names`` in ``repo``, in this process: each stage's ``main``, the code its
    script runs, without the interpreter start and imports (seconds) of a process per stage. For
    tests of what the stages compute; the scripts as processes, as DVC runs them, are tested in
    tests/test_pipeline.py and wherever a test needs a process (a kill, an exit code, torchrun)."""
    monkeypatch.chdir(repo.root)
    for name in names:
        importlib.import_module(f"stages.{name}").main()
        torch.set_num_threads(1)  # a stage may set its own count (train.cpu_threads)


@pytest.fixture(scope="session")
def digits_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``data/`` folder that the digits data stages write with the default params, made once
    per test process. Read-only for tests: :func:`digits_repo` gives each test its own copy."""
    prepared = copy_repo(REPO, tmp_path_factory.mktemp("digits-data") / "repo", TRACKED)
    prepared.params(TINY)
    for stage in DATA_STAGES:
        prepared.stage(stage)
    return prepared.root / "data"


def with_data(repo: Repo, data: Path) -> Repo:
    """``repo`` with its own copy of the prepared ``data`` folder (the data stages' outputs)."""
    shutil.copytree(data, repo.root / "data")
    return repo


@pytest.fixture
def digits_repo(repo: Repo, digits_data: Path) -> Repo:
    """:func:`repo` with the digits data stages already run (a copy of :func:`digits_data`):
    for tests that only read their outputs."""
    return with_data(repo, digits_data)


@dataclass(frozen=True)
class Reproduced:
    """A digits workspace after ``dvc repro`` and a commit, and what ``dvc repro`` printed."""

    root: Path
    stdout: str


@pytest.fixture(scope="session")
def reproduced(tmp_path_factory: pytest.TempPathFactory) -> Reproduced:
    """The digits pipeline at tiny settings as a user leaves it: ``git init``, ``dvc repro`` and
    ``git commit`` of the results. Built once per session, whichever test process (xdist worker)
    asks first; the others wait on a lock and reuse it. Read-only for tests: :func:`dvc_repo`
    gives each its own copy."""
    base = tmp_path_factory.getbasetemp()
    # Under xdist each worker's folder sits in the session's folder, which they share.
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root, printed = shared / "reproduced" / "repo", shared / "reproduced" / "stdout.txt"
    with FileLock(shared / "reproduced.lock"):
        if not printed.exists():
            shutil.rmtree(root.parent, ignore_errors=True)  # a half-built one
            repo = copy_repo(REPO, root, TRACKED)
            repo.params(TINY)
            git_init(repo)
            stdout = repo.dvc("repro").stdout
            repo.run("git", "add", "-A")
            repo.run("git", "commit", "-qm", "baseline")
            printed.write_text(stdout)
    return Reproduced(root, printed.read_text())


@pytest.fixture
def dvc_repo(reproduced: Reproduced, tmp_path: Path) -> Repo:
    """A copy of :func:`reproduced` (workspace, git history and DVC cache): the next
    ``dvc exp run`` or ``dvc repro`` reruns only what its change touches."""
    shutil.copytree(reproduced.root, tmp_path / "repo", symlinks=True)
    return Repo(tmp_path / "repo")


class Crash(Exception):
    """Stands for a kill: raised from inside the training loop at a chosen point."""


class CrashingSource:
    """A source that raises :class:`Crash` before its ``after``-th training batch is used."""

    def __init__(self, inner: Any, after: int) -> None:
        self.inner, self.left = inner, after
        self.labels, self.in_channels = inner.labels, inner.in_channels

    def __len__(self) -> int:
        return len(self.inner)

    def batches(
        self, order: torch.Tensor, batch_size: int, *, train: bool, generator: torch.Generator
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.inner.batches(order, batch_size, train=train, generator=generator):
            if train:
                if self.left == 0:
                    raise Crash
                self.left -= 1
            yield batch


def git_init(repo: Repo) -> None:
    """Make ``repo`` a git repository with one commit (DVC and DVCLive expect one)."""
    repo.run("git", "init", "-q", "-b", "main")
    repo.run("git", "config", "user.email", "test@example.com")
    repo.run("git", "config", "user.name", "test")
    repo.run("git", "add", "-A")
    repo.run("git", "commit", "-qm", "initial")


# Calls whose presence in a test or in one of its fixtures makes the test end-to-end.
E2E_CALLS = ("copy_repo(", "Repo(", "subprocess.", "git_init(")


@functools.cache
def _starts_processes(func: Any) -> bool:
    """Whether the source of ``func`` (a test or fixture function) holds one of ``E2E_CALLS``."""
    try:
        source = inspect.getsource(func)
    except (OSError, TypeError):
        return False
    return any(call in source for call in E2E_CALLS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark end-to-end every test that uses ``repo`` or another fixture that copies the
    repository or starts a process, or whose own code does; and every ``slurm`` test."""
    for item in items:
        if item.get_closest_marker("e2e"):
            continue
        info = getattr(item, "_fixtureinfo", None)
        defs = [d for ds in (info.name2fixturedefs.values() if info else ()) for d in ds]
        defs = [d for d in defs if d.argname != "_no_process_outside_e2e"]
        if (
            item.get_closest_marker("slurm")
            or "repo" in getattr(item, "fixturenames", ())
            or _starts_processes(getattr(item, "function", None))
            or any(_starts_processes(d.func) for d in defs)
        ):
            item.add_marker(pytest.mark.e2e)


class ProcessOutsideE2E(AssertionError):
    """Raised when a test outside the ``e2e`` marker starts a process."""


@pytest.fixture(autouse=True)
def _no_process_outside_e2e(request: pytest.FixtureRequest) -> Iterator[None]:
    """Refuse ``subprocess.Popen`` (and so ``subprocess.run``) in tests that are not ``e2e``:
    the everyday lane ``pytest -m "not e2e"`` must start no process."""
    if request.node.get_closest_marker("e2e"):
        yield
        return
    name = request.node.nodeid

    def refuse(self: subprocess.Popen, *args: Any, **kwargs: Any) -> None:
        command = args[0] if args else kwargs.get("args")
        raise ProcessOutsideE2E(
            f"{name} started a process ({command!r}) but is not marked e2e: mark it with "
            "@pytest.mark.e2e (or `pytestmark = pytest.mark.e2e`) so that the everyday "
            '`pytest -m "not e2e"` stays free of processes'
        )

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess.Popen, "__init__", refuse)
        yield
