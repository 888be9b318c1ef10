#!/usr/bin/env bash
# The whole GPU check, for a machine with a CUDA device (the device tool's lent
# GPU): build the CUDA extension against the torch installed there, run the
# test suite (CUDA tests included), compute-sanitizer memcheck over the CUDA
# tests of every CUDA kernel, and the GPU benchmark. Logs and tables go to
# OUT_DIR (default $OUT, else ./gpu-check).
#
#   tools/gpu_check.sh [--quick]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT_DIR:-${OUT:-gpu-check}}
mkdir -p "$out"
python=${PYTHON:-python3}
quick=${1:-}
status=0
step() { echo; echo "=== [$SECONDS s] $*"; }

step "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
$python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/device.txt"

step "build (setup.py build_ext --inplace, CUDA)"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$($python -c "import torch; print('.'.join(map(str, torch.cuda.get_device_capability())))")}
MAX_JOBS=${MAX_JOBS:-16} $python setup.py build_ext --inplace >"$out/build.log" 2>&1 || { tail -50 "$out/build.log"; exit 1; }
tail -2 "$out/build.log"

step "tests"
$python -m pytest tests -q -x -p no:cacheprovider ${quick:+-k "cuda"} >"$out/pytest.log" 2>&1 || status=1
tail -5 "$out/pytest.log"

step "compute-sanitizer memcheck over the CUDA tests"
if command -v compute-sanitizer >/dev/null; then
  compute-sanitizer --tool memcheck --error-exitcode 9 --print-limit 20 \
    $python -m pytest -q -x -p no:cacheprovider tests/test_conv1d.py tests/test_convolve.py tests/test_conv2d.py \
    -k "cuda and not large and not huge" >"$out/memcheck.log" 2>&1 || status=1
  tail -5 "$out/memcheck.log"
else
  echo "compute-sanitizer not found" | tee "$out/memcheck.log"
fi

step "benchmarks"
$python benchmarks/bench_cuda.py ${quick:+--quick} --out-dir "$out" 2>"$out/bench.err" | tee "$out/bench.txt" || status=1
$python benchmarks/bench_conv2d.py --device cuda --tf32 ${quick:+--quick} --out-dir "$out" 2>>"$out/bench.err" \
  | tee -a "$out/bench.txt" || status=1
exit $status
