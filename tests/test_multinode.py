"""Multi-node training for real: two torchrun agents on this machine, a c10d rendezvous, gloo.

The docs' recipe (docs/scale-out.md, "Several machines"): every node runs ``python -m
stages.launch <dist.nproc> <stage>`` with ``LONGTAIL_TORCHRUN_ARGS`` holding the rendezvous
arguments. Here the two "nodes" are two agents started side by side in one checkout (a shared
filesystem), ``--nnodes 2``, one process each (``dist.nproc: 1``), rendezvous on 127.0.0.1 and
every socket on the loopback interface. The pretraining run is killed (SIGKILL of one agent once
rank 0 has printed its first epoch: a lost machine) and resumed by starting both agents again; it
must end exactly where one node with two processes (``stages.launch 2``, the same world size and
so the same global batch split the same way) ends: every tensor of the model and every metric but
the time, equal bit for bit on the CPU. Finetune takes the same launcher and rendezvous;
tests/test_distributed.py checks it on two processes against one.

A watchdog SIGKILLs the agents if they are still alive after ``HUNG`` seconds, so a rendezvous
that never completes fails the test instead of hanging it; nothing is asserted on time.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY, TRACKED, Repo, copy_repo, merge

from longtail import config, data
from stages import launch

HUNG = 900.0  # seconds after which the watchdog kills agents that still run (a failed rendezvous)
PARAMS = merge(
    TINY,
    {
        "data": {"n_max": 40, "imbalance": 10, "val_per_class": 5, "test_per_class": 5},
        "pretrain": {"epochs": 3},
        "determinism": True,
        "device": "cpu",
    },
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepared(root: Path, nproc: int) -> Repo:
    """A copy of the project with prepared digits-LT and ``dist.nproc: nproc``."""
    repo = copy_repo(REPO, root, TRACKED)
    repo.params(merge(PARAMS, {"dist": {"nproc": nproc}}))
    cfg = config.load(root / "params.yaml")
    family = data.get(cfg.data.name)
    raw, out = root / "data/raw" / cfg.data.name, root / "data/prepared"
    family.download(cfg.data, raw)
    family.prepare(cfg.data, cfg.seed, raw, out)
    family.extract(cfg.frames, raw, out, root / "data/frames")
    return repo


def node_env(repo: Repo, port: int, run_id: str) -> dict[str, str]:
    """The environment of one node: the docs' ``LONGTAIL_TORCHRUN_ARGS``, loopback only."""
    args = (
        f"--nnodes 2 --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:{port} --rdzv-id {run_id} "
        "--local-addr 127.0.0.1"
    )
    # gloo picks its interface from the hostname unless told: keep it on the loopback.
    return {
        **repo.env(),
        launch.ENV: args,
        "GLOO_SOCKET_IFNAME": "lo",
        "PYTHONUNBUFFERED": "1",
    }


def two_nodes(
    repo: Repo, stage: str, run_id: str, kill_at_epoch: int | None = None
) -> tuple[str, list[int]]:
    """Start both agents; return their merged output and exit codes once both have ended.

    Both write into one pipe, read line by line. With ``kill_at_epoch``, the first agent is
    SIGKILLed as soon as rank 0 prints that epoch's line (whichever agent holds rank 0), and the
    other one must then fail on its own (its rank loses its peer).
    """
    env = node_env(repo, free_port(), run_id)
    read, write = os.pipe()
    agents = [
        subprocess.Popen(
            [sys.executable, "-m", "stages.launch", "1", stage],
            cwd=repo.root,
            env=env,
            stdout=write,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the watchdog kills each agent's group
        )
        for _ in range(2)
    ]
    os.close(write)

    hung: list[bool] = []

    def kill_all(watchdog: bool = False) -> None:
        hung.extend([True] if watchdog else [])
        for agent in agents:
            with contextlib.suppress(ProcessLookupError):  # already gone
                os.killpg(agent.pid, signal.SIGKILL)

    watchdog = threading.Timer(HUNG, kill_all, kwargs={"watchdog": True})
    watchdog.start()
    seen = []
    try:
        with os.fdopen(read, errors="replace") as pipe:
            for line in pipe:  # EOF once every agent and rank has ended
                seen.append(line)
                due = kill_at_epoch is not None and line.startswith(
                    f"[{stage}] epoch {kill_at_epoch}/"
                )
                if due:
                    os.kill(agents[0].pid, signal.SIGKILL)  # launch exec'd torchrun: same pid
                    kill_at_epoch = None
        codes = [agent.wait() for agent in agents]
    finally:
        watchdog.cancel()
        kill_all()
    output = "".join(seen)
    assert not hung, f"the agents still ran after {HUNG:.0f} s and were killed:\n{output}"
    return output, codes


def tensors(repo: Repo, name: str) -> dict[str, torch.Tensor]:
    blob = torch.load(repo.root / "models" / name, weights_only=True)
    return {k: v for k, v in _flat(blob).items() if isinstance(v, torch.Tensor)}


def _flat(tree: object, prefix: str = "") -> dict[str, object]:
    if isinstance(tree, dict):
        out: dict[str, object] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): tree}


def metrics(repo: Repo, stage: str) -> dict:
    blob = json.loads((repo.root / f"metrics/{stage}.json").read_text())
    blob.pop("seconds")
    return blob


@pytest.fixture(scope="module")
def one_node(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    """One node, two processes (``--standalone``): the reference of the same world size."""
    repo = prepared(tmp_path_factory.mktemp("one-node"), nproc=2)
    out = repo.run(sys.executable, "-m", "stages.launch", "2", "pretrain").stdout
    assert "[pretrain] world size 2 (gloo): per-rank batch 32, global batch 64" in out
    return repo


@pytest.mark.e2e
def test_two_nodes_train_resume_after_a_lost_node_and_equal_one_node(
    one_node: Repo, tmp_path: Path
) -> None:
    repo = prepared(tmp_path / "two-nodes", nproc=1)
    output, codes = two_nodes(repo, "pretrain", "lost", kill_at_epoch=1)
    assert codes[0] == -signal.SIGKILL, output
    assert codes[1] != 0, f"the surviving node ended as if nothing happened:\n{output}"
    assert "[pretrain] world size 2 (gloo): per-rank batch 32, global batch 64" in output
    killed = torch.load(repo.root / "checkpoints/pretrain.ckpt", weights_only=False)
    assert 1 <= killed["epoch"] < 3 and len(killed["ranks"]) == 2
    assert not (repo.root / "models/pretrain.pt").exists()

    output, codes = two_nodes(repo, "pretrain", "resumed")
    assert codes == [0, 0], output
    assert f"[pretrain] resuming from epoch {killed['epoch'] + 1}/3 (" in output
    assert output.count("[pretrain] epoch ") == 3 - killed["epoch"]  # rank 0 alone prints

    mine, theirs = tensors(repo, "pretrain.pt"), tensors(one_node, "pretrain.pt")
    assert mine.keys() == theirs.keys() and len(mine) > 10
    for key, value in theirs.items():
        assert torch.equal(mine[key], value), key
    assert metrics(repo, "pretrain") == metrics(one_node, "pretrain")
    for curve in ("train/loss.tsv", "val/top1.tsv"):
        path = f"dvclive/pretrain/plots/metrics/{curve}"
        assert (repo.root / path).read_text() == (one_node.root / path).read_text()


def test_launcher_checks_the_global_batch_over_every_node() -> None:
    cfg = config.parse({"dist": {"nproc": 1}, "pretrain": {"batch_size": 64}})
    launch.check(cfg, 1, "pretrain", "--nnodes 2 --rdzv-backend c10d")
    with pytest.raises(
        ValueError,
        match=r"pretrain\.batch_size: expected a global batch size "
        r"divisible by the 3 processes",
    ):
        launch.check(cfg, 1, "pretrain", "--nnodes=3 --rdzv-backend c10d")
    launch.check(cfg, 1, "pretrain", "--nnodes 1:3")  # elastic: the size is known only later
    assert launch.nodes("--rdzv-id 7 --nnodes 4") == 4
    assert launch.nodes(None) == 1 and launch.nodes("--nnodes 1:3") is None
