"""The wheels a GPU loan carries: the packages the GPU check imports that the GPU machine lacks.

    python -m benchmarks.gpu_wheels                 # into .whl/ (ignored), then prints the sizes
    python -m benchmarks.gpu_wheels --list          # only the scan: what is imported, what lacks
    python -m benchmarks.gpu_wheels --also dvclive --dest /tmp/w   # what carrying more would cost

The lent GPU machine (docs/gpu.md) has its own Python 3.12, PyTorch, torchvision and the packages
of :data:`MACHINE` and reaches no package index; what it lacks travels with the working tree as
wheels, 64 MiB in all. This script

1. reads every import (``ast``, also those inside functions) of the code the GPU check runs:
   ``benchmarks/gpu_check.py``, the benchmark modules it starts, the CUDA test files and
   ``tests/conftest.py``, every module of ``longtail/`` and ``stages/``, and the project modules
   they import; an import inside ``try: ... except ImportError`` is optional (``longtail.live``
   falls back without dvclive) and is not carried;
2. maps the imported top-level names to distributions (``importlib.metadata`` of this
   environment) and keeps those missing from :data:`MACHINE`, with the requirements they need
   (markers read for CPython 3.12 on Linux x86-64) that the machine lacks too;
3. downloads each at the version installed here (the pins of requirements.txt) as a CPython 3.12
   manylinux x86-64 wheel (``pip download --no-deps --only-binary=:all:``), one version each;
4. prints each wheel's size, their total, and the size of what a loan sends: the files git
   tracks, the untracked ones it does not ignore, and the wheels (``carry``), against 64 MiB.

It exits non-zero when a wheel cannot be had or the total is over the limit.
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata as metadata
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
LIMIT = 64 * MIB  # what one loan call sends: working tree + carried paths
WELL_UNDER = 48 * MIB  # the size this script calls comfortably inside the limit

# The GPU machine's Python packages (its image's list, read there on 2026-11-17): python3 is
# CPython 3.12.3 with torch 2.11.0+cu130 and torchvision 0.26.0.
MACHINE_LIST = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops
equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch
grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig
interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13
nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers
setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton
typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray
xxhash yarl zipp
"""
MACHINE = frozenset(MACHINE_LIST.split())
# Marker values of the machine's interpreter, for the requirements of a missing package.
MARKERS = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "extra": "",
}
PLATFORMS = ["manylinux2014_x86_64", "manylinux1_x86_64"]
PLATFORMS += [f"manylinux_2_{n}_x86_64" for n in range(17, 40)]
# Where a loan's checks start besides longtail/ and stages/ (all of which are scanned).
SEARCH_ROOTS = (REPO, REPO / "tests")  # pytest puts tests/ on sys.path (conftest, gpu)


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them (``PyYAML`` -> ``pyyaml``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class Scan:
    """The third-party imports of the GPU check's code, each with the files that import it."""

    required: dict[str, set[str]] = field(default_factory=dict)
    optional: dict[str, set[str]] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def imports_of(source: str) -> list[tuple[str, bool]]:
    """``(module, optional)`` for every absolute import of ``source``; for ``from a import b``
    both ``a.b`` and ``a``. Optional: inside a ``try`` that catches ImportError."""
    found: list[tuple[str, bool]] = []

    def catches_import_error(node: ast.Try) -> bool:
        names = []
        for handler in node.handlers:
            kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
            names += [k.id for k in kinds if isinstance(k, ast.Name)]
        return bool({"ImportError", "ModuleNotFoundError"} & set(names))

    def visit(node: ast.AST, optional: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend((alias.name, optional) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.extend((f"{node.module}.{alias.name}", optional) for alias in node.names)
            found.append((node.module, optional))
        if isinstance(node, ast.Try) and catches_import_error(node):
            for child in node.body:
                visit(child, True)
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                visit(child, optional)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, optional)

    visit(ast.parse(source), False)
    return found


def project_file(module: str, roots: Sequence[Path] = SEARCH_ROOTS) -> Path | None:
    """The file of a project module (``longtail.live`` -> longtail/live.py), else None."""
    parts = module.split(".")
    for root in roots:
        for candidate in (root.joinpath(*parts, "__init__.py"), root.joinpath(*parts[:-1],
                          f"{parts[-1]}.py")):  # fmt: skip
            if candidate.is_file():
                return candidate
    return None


def entry_files(repo: Path = REPO) -> list[Path]:
    """The files the GPU check runs directly: itself, its benchmarks, the CUDA tests, the
    package and the stages."""
    from benchmarks import gpu_check  # its lists of what it runs

    modules = ["benchmarks.gpu_check", *gpu_check.BENCHMARK_MODULES]
    files = [repo.joinpath(*m.split(".")).with_suffix(".py") for m in modules]
    files += [repo / f for f in (*gpu_check.CUDA_TEST_FILES, "tests/conftest.py")]
    files += sorted((repo / "longtail").rglob("*.py")) + sorted((repo / "stages").rglob("*.py"))
    return files


def scan(files: Iterable[Path], roots: Sequence[Path] = SEARCH_ROOTS) -> Scan:
    """Follow the project imports from ``files``; collect the third-party ones."""
    result = Scan()
    todo, seen = list(files), set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        result.files.append(path)
        for module, optional in imports_of(path.read_text()):
            top = module.partition(".")[0]
            if top in sys.stdlib_module_names or top == "__future__":
                continue
            if project_file(top, roots) is not None:  # a project module: follow it
                parts = module.split(".")
                prefixes = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
                todo += [f for f in (project_file(m, roots) for m in prefixes) if f]
                continue
            target = result.optional if optional else result.required
            target.setdefault(top, set()).add(str(path.relative_to(roots[0])))
    for top in list(result.optional):
        if top in result.required:  # imported without a fallback somewhere else
            del result.optional[top]
    return result


def distributions(modules: Iterable[str]) -> dict[str, str]:
    """Top-level module -> distribution name (normalized), from this environment's metadata."""
    owners = metadata.packages_distributions()
    out = {}
    for module in modules:
        names = owners.get(module)
        if not names:
            raise SystemExit(
                f"gpu_wheels: no installed distribution provides the module {module!r}; install "
                "requirements.txt into this environment first"
            )
        out[module] = normalize(names[0])
    return out


def missing_with_requirements(dists: Iterable[str]) -> dict[str, str]:
    """The distributions the machine lacks among ``dists`` and their requirements (for the
    machine's interpreter), each with the version installed here."""
    from packaging.requirements import Requirement

    out: dict[str, str] = {}
    todo = [normalize(d) for d in dists]
    while todo:
        name = todo.pop()
        if name in MACHINE or name in out:
            continue
        out[name] = metadata.version(name)
        for line in metadata.requires(name) or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate(MARKERS):
                todo.append(normalize(req.name))
    return dict(sorted(out.items()))


def download(wanted: dict[str, str], dest: Path) -> tuple[list[Path], list[str]]:
    """``pip download`` each ``name==version`` as a cp312 manylinux x86-64 wheel into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):  # one version of each: two stop the install
        old.unlink()
    failed = []
    for name, version in wanted.items():
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
        cmd += ["--python-version", "3.12", "--implementation", "cp", "-d", str(dest)]
        cmd += [arg for p in PLATFORMS for arg in ("--platform", p)]
        proc = subprocess.run([*cmd, f"{name}=={version}"], capture_output=True, text=True)
        if proc.returncode != 0:
            failed.append(f"{name}=={version}: {proc.stderr.strip().splitlines()[-1:]}")
    return sorted(dest.glob("*.whl")), failed


def travelling_files(repo: Path = REPO) -> list[Path]:
    """The working tree as a loan sends it: tracked files and untracked ones git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo, capture_output=True, check=True,
    ).stdout.decode()  # fmt: skip
    return [
        repo / name for name in sorted(set(listed.split("\0"))) if name and (repo / name).is_file()
    ]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_wheels", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--dest", type=Path, default=REPO / ".whl", help="wheel folder (.whl/)")
    p.add_argument("--also", nargs="*", default=[], help="more distributions to carry")
    p.add_argument("--list", action="store_true", help="only scan and list; download nothing")
    args = p.parse_args(argv)

    found = scan(entry_files())
    required = distributions(found.required)
    print(f"scanned {len(found.files)} files of the GPU check")
    for module, dist in sorted(required.items()):
        where = "on the machine" if dist in MACHINE else "MISSING on the machine"
        print(f"  import {module:<12} {dist:<24} {where}")
    for module, files in sorted(found.optional.items()):
        print(f"  import {module:<12} optional, not carried ({', '.join(sorted(files))})")
    wanted = missing_with_requirements([*required.values(), *args.also])
    print(f"to carry: {', '.join(f'{n}=={v}' for n, v in wanted.items()) or 'nothing'}")
    if args.list:
        return 0

    wheels, failed = download(wanted, args.dest) if wanted else ([], [])
    if not wanted and args.dest.is_dir():
        for old in args.dest.glob("*.whl"):
            old.unlink()
    for wheel in wheels:
        print(f"  {wheel.name:<72} {wheel.stat().st_size / MIB:8.2f} MiB")
    wheel_bytes = sum(w.stat().st_size for w in wheels)
    tree = travelling_files()
    tree_bytes = sum(
        f.stat().st_size for f in tree if args.dest.resolve() not in f.resolve().parents
    )
    total = tree_bytes + wheel_bytes
    verdict = "well under" if total < WELL_UNDER else "NOT well under"
    print(f"wheels: {len(wheels)} files, {wheel_bytes / MIB:.2f} MiB in {args.dest}")
    print(f"working tree: {len(tree)} files, {tree_bytes / MIB:.2f} MiB (tracked + not ignored)")
    print(f"a loan sends {total / MIB:.2f} MiB of 64 MiB ({verdict} {WELL_UNDER // MIB} MiB)")
    for line in failed:
        print(f"no wheel: {line}", file=sys.stderr)
    return 1 if failed or total >= LIMIT else 0


if __name__ == "__main__":
    sys.exit(main())
