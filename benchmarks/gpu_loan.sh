#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py) on a lent GPU machine that has its own python3, PyTorch
# and torchvision and no package index: the command its loan runs (docs/gpu.md, BENCHMARKS.md).
#
#   bash benchmarks/gpu_loan.sh                              # the whole check, about 8 minutes
#   bash benchmarks/gpu_loan.sh --parts digits decode        # a rerun of the parts that failed
#   OUT=/tmp/o bash benchmarks/gpu_loan.sh --device cpu --tiny   # the same steps on a CPU
#
# Any further arguments go to gpu_check. Steps: the wheels in .whl/ (benchmarks/gpu_wheels.py
# downloads those of the packages the machine lacks) go into a scratch site folder, first on
# PYTHONPATH; gpu_check writes its tables and logs into a scratch folder and brings back, after
# every part, README.md, the part tables and logs.tar.gz into $OUT (at most 8 files).
# Settings: OUT (required), PYTHON (python3), GPU_LOAN_SITE (/tmp/site).
set -uo pipefail
: "${OUT:?OUT must name the folder whose files come back}"
cd "$(dirname "$0")/.." || exit 2
PYTHON=${PYTHON:-python3}
SITE=${GPU_LOAN_SITE:-/tmp/site}
shopt -s nullglob
wheels=(.whl/*.whl)
if ((${#wheels[@]})); then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "${wheels[@]}" || exit 3
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
echo "[gpu_loan] ${#wheels[@]} wheel(s) from .whl into $SITE"
"$PYTHON" -c 'import sys, torch, torchvision
print("[gpu_loan] python", sys.version.split()[0], "torch", torch.__version__, "torchvision",
      torchvision.__version__, "cuda", torch.cuda.is_available())' || exit 4
WORK=$(mktemp -d) || exit 2
exec "$PYTHON" -m benchmarks.gpu_check --out "$WORK/gpu-report" --bring-back "$OUT" "$@"
