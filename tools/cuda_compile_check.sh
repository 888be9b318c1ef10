#!/usr/bin/env bash
# Compiles and links every fastconv source, CUDA included, with nvcc against the
# CUDA build of torch, on a machine without a GPU. The wheel is only unpacked
# (headers and libraries), never installed. A build error exits non-zero.
#
#   tools/cuda_compile_check.sh [CACHE_DIR]
# Env: TORCH_CUDA_VERSION (default 2.13.0), PYTHON (default python3),
#      TORCH_CUDA_ARCH_LIST (default "8.0;9.0+PTX"), NVCC (default nvcc),
#      CXX_STD (default c++20, as torch >= 2.13 builds extensions; c++17 for older torch).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/fastconv/torch-cuda}
version=${TORCH_CUDA_VERSION:-2.13.0}
python=${PYTHON:-python3}
nvcc=${NVCC:-nvcc}
arch_list=${TORCH_CUDA_ARCH_LIST:-"8.0;9.0+PTX"}
std=${CXX_STD:-c++20}

command -v "$nvcc" >/dev/null || { echo "cuda_compile_check: nvcc not found" >&2; exit 1; }
mkdir -p "$cache"
torch_dir=$cache/unpacked/torch
if [ ! -f "$torch_dir/lib/libtorch_cuda.so" ]; then
  echo "cuda_compile_check: fetching the CUDA wheel of torch $version (~530 MB)"
  # --isolated: ignore the local find-links that hold the CPU wheel.
  "$python" -m pip download --isolated --no-deps --only-binary=:all: --progress-bar off \
    "torch==$version" -d "$cache/wheel"
  wheel=$(ls "$cache"/wheel/torch-"$version"-*.whl | head -n 1)
  rm -rf "$cache/unpacked"
  unzip -q -o "$wheel" 'torch/include/*' 'torch/lib/*' -d "$cache/unpacked"
fi
[ -f "$torch_dir/lib/libtorch_cuda.so" ] || { echo "cuda_compile_check: no libtorch_cuda.so: not a CUDA wheel" >&2; exit 1; }

gencode=()
IFS=';' read -ra archs <<<"$arch_list"
for a in "${archs[@]}"; do
  num=${a%+PTX}; num=${num/./}
  gencode+=("-gencode=arch=compute_$num,code=sm_$num")
  [[ $a == *+PTX ]] && gencode+=("-gencode=arch=compute_$num,code=compute_$num")
done

build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
# One source per core at a time (nvcc and g++ run one thread each).
compile_one() {
  local src=$1 obj
  obj=$build/$(echo "$src" | tr '/' '_').o
  echo "cuda_compile_check: compiling $src"
  local includes=(-I"$root/csrc" -I"$torch_dir/include" -I"$torch_dir/include/torch/csrc/api/include")
  local defines=(-D_GLIBCXX_USE_CXX11_ABI=1 -DTORCH_API_INCLUDE_EXTENSION_H=0)
  if [[ $src == *.cu ]]; then
    local gencode
    read -ra gencode <<<"$GENCODE"
    "$nvcc" -std=$std -O2 -Xcompiler -fPIC --expt-relaxed-constexpr "${gencode[@]}" \
      "${includes[@]}" "${defines[@]}" -c "$src" -o "$obj"
  else
    g++ -std=$std -O1 -fPIC -fopenmp -ffp-contract=fast "${includes[@]}" "${defines[@]}" -c "$src" -o "$obj"
  fi
}
export -f compile_one
export root torch_dir build nvcc std GENCODE="${gencode[*]}"
cd "$root"
sources=$(find csrc/fastconv -name '*.cpp' -o -name '*.cu' | sort)
# xargs exits non-zero when any compile fails.
echo "$sources" | xargs -P "$(nproc)" -I{} bash -c 'compile_one "$1"' _ {}
objects=()
for src in $sources; do objects+=("$build/$(echo "$src" | tr '/' '_').o"); done
cuda_top=${CUDA_HOME:-$("$nvcc" -dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p')}
cuda_lib=$cuda_top/lib64
echo "cuda_compile_check: linking libfastconv_cuda_check.so"
g++ -shared -fopenmp -Wl,--no-undefined -o "$build/libfastconv_cuda_check.so" "${objects[@]}" \
  -L"$torch_dir/lib" -L"$cuda_lib" -ltorch -ltorch_cpu -ltorch_cuda -lc10_cuda -lc10 -lcudart \
  -Wl,--unresolved-symbols=ignore-in-shared-libs
echo "cuda_compile_check: OK (${#objects[@]} sources, archs $arch_list)"
