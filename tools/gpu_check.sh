#!/usr/bin/env bash
# The whole GPU check, for a machine with a CUDA device (the device tool's lent
# GPU), fitted to a deadline:
#   1. build the CUDA extension against the torch installed there;
#   2. at once, in parallel: the CUDA tests, the other tests, and
#      compute-sanitizer memcheck over the CUDA tests of each kernel family
#      (conv1d, convolve, conv2d);
#   3. alone on the GPU: the GPU benchmarks (bench_cuda.py, bench_conv2d.py).
# Every log goes into one archive, OUT_DIR/gpu-check.tar.gz, rewritten after
# each step so that a run cut short still returns what it did.
#
#   tools/gpu_check.sh [--gdb]
# --gdb: run the non-CUDA tests in one process under cuda-gdb (the machine has
#        no gdb), which prints the native backtrace of a crash.
# Env: OUT_DIR (default $OUT, else ./gpu-check), PYTHON (python3), JOBS (pytest
#      workers per suite, 6), DEADLINE (seconds for the whole script, 540).
set -uo pipefail
cd "$(dirname "$0")/.."
# The in-place build is imported from here, by the benchmarks and by the
# tests' subprocesses too (some drop '' and '.' from sys.path).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
gdb=${1:-}
out=${OUT_DIR:-${OUT:-gpu-check}}
mkdir -p "$out"
logs=$(mktemp -d)
python=${PYTHON:-python3}
jobs=${JOBS:-6}
deadline=${DEADLINE:-540}
status=0

pack() { tar -czf "$out/gpu-check.tar.gz" -C "$logs" .; }
step() { pack; echo; echo "=== [$SECONDS s] $*"; }
# Seconds a step may take: its own cap, or what is left before the deadline.
budget() { local left=$((deadline - SECONDS)); echo $(($1 < left ? $1 : (left > 1 ? left : 1))); }
summary() {  # the pytest outcome line and the failures of a log
  grep -E "^(FAILED|ERROR) " "$1" | head -40
  grep -E " in [0-9.]+s( \(.*\))?$" "$1" | tail -1 || echo "(no pytest summary: cut off?)"
}

step "device"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
  $python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  nvcc --version | tail -2
  command -v compute-sanitizer && compute-sanitizer --version | tail -1
  echo "cores: $(nproc)"
} 2>&1 | tee "$logs/device.txt"

step "build (setup.py build_ext --inplace, CUDA)"
# ptxas -v: each kernel's registers, shared memory and spills, in build.log.
export NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:-} -Xptxas=-v"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$($python -c "import torch; print('.'.join(map(str, torch.cuda.get_device_capability())))")}
if ! MAX_JOBS=${MAX_JOBS:-$(nproc)} timeout "$(budget 240)" $python setup.py build_ext --inplace >"$logs/build.log" 2>&1; then
  grep -E "error|Error" "$logs/build.log" | head -30
  tail -20 "$logs/build.log"
  pack
  exit 1
fi
grep -cE "^\[[0-9]+/[0-9]+\]" "$logs/build.log" | sed 's/^/compile steps: /'
$python -c "import fastconv_ext, torch; print('CUDA kernel registered:', torch._C._dispatch_has_kernel_for_dispatch_key('fastconv::conv1d', 'CUDA'))"

step "tests: CUDA, the rest, and compute-sanitizer memcheck, in parallel"
xdist=()
$python -c "import xdist" 2>/dev/null && xdist=(-n "$jobs")
pytest=($python -m pytest -q -p no:cacheprovider --tb=short -rfE)
t=$(budget 150)
timeout "$t" "${pytest[@]}" "${xdist[@]}" tests -k cuda >"$logs/pytest_cuda.log" 2>&1 &
cuda_pid=$!
if [ "$gdb" = --gdb ] && command -v cuda-gdb >/dev/null; then
  timeout "$t" cuda-gdb -q -batch -iex "set auto-solib-add off" -ex "set pagination off" -ex run \
    -ex "sharedlibrary (_C\\.cpython|libc10|libstdc|libgcc|libtorch_cpu|libtorch_python)" -ex "bt 40" --args "${pytest[@]}" tests -k "not cuda" >"$logs/pytest_rest.log" 2>&1 &
else
  timeout "$t" "${pytest[@]}" "${xdist[@]}" tests -k "not cuda" >"$logs/pytest_rest.log" 2>&1 &
fi
rest_pid=$!
memcheck_pids=()
if command -v compute-sanitizer >/dev/null; then
  for sel in test_conv1d.py test_conv1d_fft.py test_convolve.py test_conv2d.py; do
    name=memcheck_$(echo "${sel%%::*}" | sed 's/\.py//')
    timeout "$t" compute-sanitizer --tool memcheck --error-exitcode 9 --print-limit 20 \
      "${pytest[@]}" -x "tests/$sel" -k "cuda and not large and not huge" >"$logs/$name.log" 2>&1 &
    memcheck_pids+=($!)
  done
fi
wait $cuda_pid || status=1
echo "--- CUDA tests"; summary "$logs/pytest_cuda.log"
wait $rest_pid || status=1
echo "--- other tests"; summary "$logs/pytest_rest.log"
for pid in "${memcheck_pids[@]}"; do wait "$pid" || status=1; done
for f in "$logs"/memcheck_*.log; do
  [ -f "$f" ] || continue
  echo "--- $(basename "$f" .log)"
  grep -E "ERROR SUMMARY|Invalid|out of bounds|Address .* is" "$f" | head -8
  summary "$f"
done

step "benchmarks"
timeout "$(budget 150)" $python benchmarks/bench_cuda.py --out-dir "$logs" >"$logs/bench.txt" 2>"$logs/bench.err" || status=1
cat "$logs/bench.txt"; grep FAILED "$logs/bench.err"
timeout "$(budget 60)" $python benchmarks/bench_conv2d.py --device cuda --tf32 --out-dir "$logs" \
  >"$logs/bench_conv2d.txt" 2>>"$logs/bench.err" || status=1
cat "$logs/bench_conv2d.txt"

step "done (status $status)"
pack
exit $status
