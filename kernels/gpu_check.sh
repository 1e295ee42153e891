#!/usr/bin/env bash
# The GPU check of the Triton kernels, for a fresh GPU machine: installs nothing (run it where
# `pip install -e '.[test]'` was done with a CUDA build of torch), takes under 8 minutes, and writes
# its full log and the benchmark table into the directory given as its argument (bench.json is
# rewritten after every row, so a run cut by its time limit keeps what it measured):
#   env.txt, tests.log (every kernel test on CUDA tensors, the GPU-only ones included),
#   bench.txt + bench.json (python -m kernels.bench, the per-op rows), bench_models.txt +
#   bench_models.json (python -m tdrm.bench kernels, the whole-model rows), summary.txt.
# usage: kernels/gpu_check.sh OUT_DIR
set -uo pipefail
out=${1:?usage: kernels/gpu_check.sh OUT_DIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
{
  date -u
  git rev-parse --short HEAD 2>/dev/null || true
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || true
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())"
} > "$out/env.txt" 2>&1
cat "$out/env.txt"
if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA device; nothing checked (the CPU tests run the kernels in Triton's interpreter)" \
    | tee "$out/summary.txt"
  exit 0
fi
unset TRITON_INTERPRET
export TDRM_KERNELS=triton  # auto stays on the torch path until this script has passed (kernels/dispatch.py)
start=$(date +%s)
timeout 150 $PY -m pytest -q -p no:cacheprovider tests/kernels 2>&1 | tee "$out/tests.log"
tests_rc=${PIPESTATUS[0]}
timeout 200 $PY -m kernels.bench --out "$out/bench.json" 2>&1 | tee "$out/bench.txt"
bench_rc=${PIPESTATUS[0]}
timeout 150 $PY -m tdrm.bench kernels --out "$out/bench_models.json" 2>&1 | tee "$out/bench_models.txt"
models_rc=${PIPESTATUS[0]}
{
  echo "tests: exit $tests_rc ($(tail -n 1 "$out/tests.log"))"
  echo "bench: exit $bench_rc"
  echo "bench models: exit $models_rc"
  echo "wall: $(( $(date +%s) - start )) s"
} | tee "$out/summary.txt"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ "$models_rc" -eq 0 ]
