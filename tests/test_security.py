"""Nothing the pipeline loads can run code: weights-only torch files, and a check of every call.

A crafted pickle whose ``__reduce__`` writes a marker file stands for a tampered file from a DVC
remote. Planted where each stage reads a torch file (``checkpoints/pretrain.ckpt``,
``models/pretrain.pt``, ``checkpoints/finetune.ckpt``, ``models/final.pt``), it is refused with a
message naming the file and what to do, and the marker never appears. A control shows the same
bytes do write the marker when unpickled the unsafe way. An AST check finds every ``torch.load``
in the package, the stages, the benchmarks and the tools that does not pass ``weights_only=True``;
it is itself tested on small sources that plant bad calls. Paths that list files, split files and
manifests join to a root may not leave it.
"""

from __future__ import annotations

import ast
import json
import pickle
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, TINY, TRACKED, Repo, copy_repo, with_data
from test_distributed import make_trainer, run_ranks

from longtail import io, nets, pipeline, train
from longtail.data import base, imagelist, video
from longtail.distributed import World
from longtail.meta import MetaSampler

SEARCHED = ("longtail", "stages", "benchmarks", "tools")


# ------------------------------------------------------------------------------ the crafted file
class Payload:
    """Unpickling it runs ``exec`` of a line that writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def plant(path: Path, marker: Path, form: str) -> None:
    """Write a crafted file at ``path``: a torch archive, or a bare pickle (protocol 2)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"state_dict": Payload(marker), "arch": "resnet32"}
    if form == "torch":
        torch.save(blob, path)
    else:
        path.write_bytes(pickle.dumps(blob, protocol=2))


FORMS = ["torch", "pickle"]


@pytest.mark.parametrize("form", FORMS)
def test_the_crafted_file_runs_code_when_unpickled_unsafely(tmp_path: Path, form: str) -> None:
    marker = tmp_path / "marker"
    plant(tmp_path / "evil.pt", marker, form)
    if form == "torch":
        torch.load(tmp_path / "evil.pt", weights_only=False)  # what the pipeline did before
    else:
        pickle.loads((tmp_path / "evil.pt").read_bytes())
    assert marker.read_text() == "ran"


@pytest.mark.parametrize("form", FORMS)
def test_load_torch_refuses_it_without_running_it(tmp_path: Path, form: str) -> None:
    marker, path = tmp_path / "marker", tmp_path / "evil.pt"
    plant(path, marker, form)
    with pytest.raises(io.UnsafeFileError) as err:
        io.load_torch(path, "Do this.")
    assert str(err.value).startswith(
        f"{path} was refused: expected only tensors, numbers, strings, lists and dicts (a "
        "weights-only load), got "
    )
    assert re.search(r"got GLOBAL (builtins\.)?exec \(a class or function", str(err.value))
    assert str(err.value).endswith("unpickling other objects can run arbitrary code. Do this.")
    assert "weights_only=False" not in str(err.value)  # not PyTorch's advice to retry unsafely
    assert not marker.exists()


def test_load_torch_reads_plain_values(tmp_path: Path) -> None:
    blob = {"w": torch.arange(3.0), "n": 2, "s": "x", "l": [1.5, None, (1, 2)], "big": 2**100}
    io.save_torch(blob, tmp_path / "ok.pt")
    back = io.load_torch(tmp_path / "ok.pt", "unused")
    assert torch.equal(back.pop("w"), torch.arange(3.0))
    assert back == {"n": 2, "s": "x", "l": [1.5, None, (1, 2)], "big": 2**100}


def test_a_bare_pickle_of_another_protocol_is_unreadable_not_run(tmp_path: Path) -> None:
    marker, path = tmp_path / "marker", tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(Payload(marker), protocol=5))
    with pytest.raises(
        pickle.UnpicklingError, match=rf"^{re.escape(str(path))}: unsupported pickle opcode 149$"
    ):
        io.load_torch(path, "unused")
    assert not marker.exists()


def test_model_weights_refuses_it(tmp_path: Path) -> None:
    marker, path = tmp_path / "marker", tmp_path / "weights.pt"
    plant(path, marker, "torch")
    with pytest.raises(io.UnsafeFileError, match=r"Point model\.weights at a plain state dict"):
        nets.load_weights(nets.create("resnet32", 10), path)
    assert not marker.exists()


# ------------------------------------------------------------ what the pipeline writes loads safely
def test_rng_state_is_plain_and_round_trips_through_a_weights_only_file(tmp_path: Path) -> None:
    random.random(), np.random.rand(), np.random.randn()  # a cached Gaussian in NumPy's state
    io.save_torch(train.rng_state(), tmp_path / "rng.pt")
    first = (torch.rand(3), random.random(), np.random.randn(2))
    train.set_rng_state(io.load_torch(tmp_path / "rng.pt", "unused"))
    again = (torch.rand(3), random.random(), np.random.randn(2))
    assert torch.equal(first[0], again[0]) and first[1] == again[1]
    assert np.array_equal(first[2], again[2])


def test_a_training_checkpoint_loads_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "pretrain.ckpt"
    make_trainer(World(), loss="cdb_ce", checkpoint=path).fit()
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert state["epoch"] == 3 and state["loss"]["weights"].shape == (4,)


def test_the_meta_sampler_state_loads_weights_only(tmp_path: Path) -> None:
    sampler = MetaSampler(torch.tensor([0, 0, 0, 1, 1, 2]), seed=0)
    sampler.set_epoch(0, 2)
    io.save_torch(sampler.state_dict(), tmp_path / "meta.pt")
    restored = MetaSampler(torch.tensor([0, 0, 0, 1, 1, 2]), seed=0)
    restored.load_state_dict(io.load_torch(tmp_path / "meta.pt", "unused"))
    assert torch.equal(restored.logits.detach(), sampler.logits.detach())
    assert restored.history == sampler.history and restored.epoch == 0


def test_a_model_file_loads_weights_only(tmp_path: Path) -> None:
    model = nets.create("resnet32", 10)
    config = {"seed": 0, "model": {"arch": "resnet32", "weights": None}, "lr": [0.1, 1e-05]}
    pipeline.save_model(tmp_path / "m.pt", model, "resnet32", 10, 3, config, extra={"mode": "x"})
    back, blob = pipeline.load_model(tmp_path / "m.pt")
    assert blob["config"] == config and blob["mode"] == "x"
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


# --------------------------------------------------------------------- each stage refuses it
@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, digits_data: Path) -> Repo:
    """A copy of the repository with the digits data prepared (the stages before pretrain)."""
    repo = copy_repo(REPO, tmp_path_factory.mktemp("security") / "repo", TRACKED)
    repo.params(TINY)
    return with_data(repo, digits_data)


def write_plain_model(repo: Repo, name: str) -> None:
    """A good model file (an untrained ResNet-32), as pretrain writes it."""
    info = json.loads((repo.root / "data/prepared/dataset.json").read_text())
    classes = len(json.loads((repo.root / "data/prepared/class_counts.json").read_text())["train"])
    model = nets.create("resnet32", classes, in_channels=info["in_channels"])
    pipeline.save_model(
        repo.root / "models" / name, model, "resnet32", classes, info["in_channels"], {}
    )


# (stage run, the file planted, a good file it needs first, what the message tells the user)
CASES = [
    ("pretrain", "checkpoints/pretrain.ckpt", None, "Delete it (rm checkpoints/pretrain.ckpt)"),
    ("finetune", "models/pretrain.pt", None, "rewrite it with dvc repro --force pretrain"),
    (
        "finetune",
        "checkpoints/finetune.ckpt",
        "pretrain.pt",
        "Delete it (rm checkpoints/finetune.ckpt)",
    ),
    ("evaluate", "models/final.pt", None, "rewrite it with dvc repro --force finetune"),
]


@pytest.mark.parametrize(("stage", "planted", "needs", "remedy"), CASES)
def test_each_stage_refuses_a_crafted_file(
    prepared: Repo, stage: str, planted: str, needs: str | None, remedy: str
) -> None:
    root = prepared.root
    for old in ("models", "checkpoints"):
        shutil.rmtree(root / old, ignore_errors=True)
    if needs is not None:
        write_plain_model(prepared, needs)
    marker = root.parent / f"marker-{stage}-{Path(planted).stem}"
    plant(root / planted, marker, "torch")
    before = (root / planted).read_bytes()
    proc = prepared.stage(stage, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith(f"error: {planted} was refused: expected only tensors, ")
    assert "got GLOBAL exec (a class or function that unpickling would call)" in message
    assert remedy in message
    assert not marker.exists()
    assert (root / planted).read_bytes() == before  # left for the user, never overwritten


def refused_on_two_ranks(world: World, folder: str) -> dict:
    """Rank 0 reads a crafted checkpoint: every rank raises its message, none waits forever."""
    path, marker = Path(folder) / "pretrain.ckpt", Path(folder) / "marker"
    if world.is_main:
        plant(path, marker, "torch")
    world.barrier()
    trainer = make_trainer(world, checkpoint=path)
    try:
        trainer.resume()
    except io.UnsafeFileError as err:
        return {"refused": str(err), "marker": marker.exists()}
    return {"refused": None, "marker": marker.exists()}


@pytest.mark.e2e
def test_two_ranks_refuse_a_crafted_checkpoint(tmp_path: Path) -> None:
    results = run_ranks(refused_on_two_ranks, tmp_path / "ranks")
    path = tmp_path / "ranks" / "pretrain.ckpt"
    for result in results:
        assert result["refused"].startswith(f"{path} was refused: ")
        assert not result["marker"]
    assert results[0]["refused"] == results[1]["refused"]


# ------------------------------------------------------------------ every torch.load is checked
def _dotted(node: ast.expr) -> str | None:
    """``a.b.c`` of a Name/Attribute chain, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def _torch_bindings(tree: ast.AST) -> tuple[set[str], set[str]]:
    """Names bound to the modules ``torch`` / ``torch.serialization``, and to their ``load``."""
    modules, loaders = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in ("torch", "torch.serialization"):
                    modules.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module in ("torch", "torch.serialization"):
            for alias in node.names:
                if alias.name == "load":
                    loaders.add(alias.asname or alias.name)
                elif alias.name == "serialization":
                    modules.add(alias.asname or alias.name)
    return modules, loaders


def _weights_only_problem(call: ast.Call) -> str | None:
    keyword = next((k for k in call.keywords if k.arg == "weights_only"), None)
    if keyword is None:
        if any(k.arg is None for k in call.keywords):
            return "torch.load with **kwargs: weights_only cannot be checked"
        return "torch.load without weights_only=True"
    if not (isinstance(keyword.value, ast.Constant) and keyword.value.value is True):
        return f"torch.load with weights_only={ast.unparse(keyword.value)} (expected True)"
    return None


def torch_loads(source: str, filename: str = "<string>") -> tuple[list[int], list[str]]:
    """Lines of the ``torch.load`` calls in ``source``, and a ``file:line: why`` for bad ones.

    Found through the imports: ``torch.load``, ``torch.serialization.load``, a module alias
    (``import torch as T``) and ``from torch import load [as x]``. A ``torch.load`` that is
    referenced rather than called (``f = torch.load``) is bad too: its calls cannot be checked.
    """
    tree = ast.parse(source, filename)
    modules, loaders = _torch_bindings(tree)
    names = {f"{m}.load" for m in modules} | {f"{m}.serialization.load" for m in modules}

    def is_load(node: ast.expr) -> bool:
        dotted = _dotted(node)
        return dotted in names or (isinstance(node, ast.Name) and node.id in loaders)

    lines, bad, called = [], [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and is_load(node.func):
            called.add(id(node.func))
            lines.append(node.lineno)
            problem = _weights_only_problem(node)
            if problem is not None:
                bad.append(f"{filename}:{node.lineno}: {problem}")
    for node in ast.walk(tree):
        referenced = isinstance(node, (ast.Name, ast.Attribute)) and id(node) not in called
        if referenced and is_load(node) and not isinstance(node.ctx, ast.Store):
            bad.append(f"{filename}:{node.lineno}: torch.load referenced, not called")
    return sorted(lines), bad


@pytest.mark.parametrize(
    ("source", "bad"),
    [
        ("import torch\ntorch.load(p)", ["torch.load without weights_only=True"]),
        (
            "import torch\ntorch.load(p, weights_only=False)",
            ["torch.load with weights_only=False (expected True)"],
        ),
        (
            "import torch\ntorch.load(p, weights_only=flag)",
            ["torch.load with weights_only=flag (expected True)"],
        ),
        (
            "import torch\ntorch.load(p, **options)",
            ["torch.load with **kwargs: weights_only cannot be checked"],
        ),
        ("import torch as T\nT.load(p)", ["torch.load without weights_only=True"]),
        ("from torch import load as tl\ntl(p)", ["torch.load without weights_only=True"]),
        (
            "import torch.serialization\ntorch.serialization.load(p)",
            ["torch.load without weights_only=True"],
        ),
        (
            "from torch import serialization\nserialization.load(p, weights_only=0)",
            ["torch.load with weights_only=0 (expected True)"],
        ),
        ("import torch\nreader = torch.load", ["torch.load referenced, not called"]),
        (
            "import torch\ndef f(p):\n    return torch.load(p, map_location='cpu')",
            ["torch.load without weights_only=True"],
        ),
        ("import torch\ntorch.load(p, map_location='cpu', weights_only=True)", []),
        ("import numpy as np\nnp.load(p)\njson.load(f)\npickle.load(f)", []),
    ],
)
def test_the_checker_finds_planted_bad_calls(source: str, bad: list[str]) -> None:
    _, found = torch_loads(source)
    assert [line.split(": ", 1)[1] for line in found] == bad


def test_every_torch_load_passes_weights_only_true() -> None:
    bad, calls = [], {}
    for folder in SEARCHED:
        for path in sorted((REPO / folder).rglob("*.py")):
            name = str(path.relative_to(REPO))
            lines, found = torch_loads(path.read_text(), name)
            bad += found
            if lines:
                calls[name] = lines
    assert bad == []
    # One helper reads every torch file, so its message and its policy hold everywhere.
    assert list(calls) == ["longtail/io.py"] and len(calls["longtail/io.py"]) == 1


# ------------------------------------------------------------------ paths from outside stay inside
@pytest.mark.parametrize("text", ["../etc/passwd", "a/../../b.jpg", "a\\..\\b.jpg", ""])
def test_relative_path_refuses_paths_that_leave_the_root(text: str) -> None:
    with pytest.raises(ValueError, match=r"^list:3: expected a relative path inside the data"):
        io.relative_path(text, "list:3")


@pytest.mark.parametrize("text", ["train/n01/x.JPEG", "a..b/c.jpg", "OP01-R01-Pasta/clip"])
def test_relative_path_keeps_ordinary_paths(text: str) -> None:
    assert io.relative_path(text, "unused") == text


def test_a_list_file_that_climbs_out_of_the_root_is_refused(tmp_path: Path) -> None:
    listing = tmp_path / "train.txt"
    listing.write_text("/train/a/1.jpg 0\ntrain/../../secret.jpg 1\n")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(listing))}:2: expected a relative"):
        imagelist.parse_list(listing)
    listing.write_text("/train/a/1.jpg 0\n")
    assert imagelist.parse_list(listing) == [("train/a/1.jpg", 0)]  # a leading / means the root


def test_an_egtea_clip_name_is_one_path_component() -> None:
    with pytest.raises(ValueError, match="clip name: expected"):
        video.parse_clip_name("../../tmp/OP01-R01-PastaSalad-1-2-F1-F2")
    assert video.parse_clip_name("OP01-R01-PastaSalad-1-2-F1-F2") == ("OP01-R01-PastaSalad", "OP01")


@pytest.mark.parametrize("column", ["path", "clip"])
def test_a_manifest_from_a_remote_cannot_point_outside(tmp_path: Path, column: str) -> None:
    (tmp_path / "train.csv").write_text(f"{column},label\nok/a.jpg,0\n../../x,1\n")
    with pytest.raises(ValueError, match=r"train\.csv:3 \(" + column + r"\): expected a relative"):
        base.read_manifest(tmp_path, "train")
