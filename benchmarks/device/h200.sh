#!/usr/bin/env bash
# On the lent H200 (device tool's `run`), in the repository root, once fetch_wheels.sh's parts
# are all there: joins and installs onnxruntime-gpu beside the image's torch (CUDA 13 and cuDNN
# libraries), runs the CUDA tests and benchmarks/gpu_throughput.py, and leaves logs and results
# in $OUT. Ends within ~8.5 min (pytest ≤ 2 min, benchmark ≤ 6 min, each row written when done).
#
# Dry run on a machine without CUDA (wheels fetched with PY_VERSION of that python):
#   PROVIDER=cpu BENCH_ARGS="--models mnist_cnn --ts 4 --batch 8" bash benchmarks/device/h200.sh
set -uo pipefail
OUT=${OUT:-/tmp/icsnn-out}
PROVIDER=${PROVIDER:-cuda}
BENCH_ARGS=${BENCH_ARGS:-}
export PYTHONUNBUFFERED=1
began=$SECONDS
say() { echo "[h200 +$((SECONDS - began))s] $*"; }

main() {
    shopt -s nullglob
    local sums=(.whl/onnxruntime_gpu-*.whl.sha256)
    [ ${#sums[@]} -eq 1 ] || { say "expected one onnxruntime_gpu checksum in .whl, found ${#sums[@]}"; return 2; }
    local wheel
    wheel=$(basename "${sums[0]}" .sha256)
    mkdir -p /tmp/wheels
    cat .whl/"$wheel".part-* > "/tmp/wheels/$wheel"
    (cd /tmp/wheels && sha256sum -c --quiet "$OLDPWD/${sums[0]}") || { say "parts missing: $(ls .whl)"; return 2; }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "/tmp/wheels/$wheel" .whl/onnx_graphsurgeon-*.whl || return 2
    # onnxruntime-gpu shadows the image's CPU onnxruntime; the package runs from this tree.
    export PYTHONPATH=/tmp/site:$PWD
    # The image's CUDA 13 / cuDNN 9 libraries (torch's NVIDIA wheels), for the dynamic loader.
    local libs
    libs=$(python3 -c "import glob, nvidia, os; print(':'.join(sorted({os.path.dirname(p) for d in nvidia.__path__ for p in glob.glob(d + '/*/lib/*.so*')})))" 2>/dev/null)
    export LD_LIBRARY_PATH=${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    say "installed $wheel"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
    python3 -c "import onnxruntime as ort; from icsnn_onnx.runtime import cuda_available; \
print('onnxruntime', ort.__version__, ort.__file__, ort.get_available_providers(), 'CUDA works:', cuda_available())"
    if [ "$PROVIDER" = cuda ]; then
        python3 -c "from icsnn_onnx.runtime import cuda_available; assert cuda_available()" \
            || { say "the CUDA provider does not run: stopping"; return 3; }
    fi

    say "CUDA tests"
    timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_bench.py \
        tests/test_runtime.py > "$OUT/pytest.log" 2>&1
    say "pytest exit $?: $(tail -1 "$OUT/pytest.log")"

    say "benchmark"
    # shellcheck disable=SC2086  # BENCH_ARGS is a list of options
    timeout 360 python3 benchmarks/gpu_throughput.py --provider "$PROVIDER" --budget-s 240 \
        --out "$OUT/gpu_throughput.json" $BENCH_ARGS 2>&1 | grep -v '^\[W\]\|Warn\|^Note\|^Producer'
    say "benchmark exit ${PIPESTATUS[0]}"
}

mkdir -p "$OUT"
main 2>&1 | tee "$OUT/h200.log"
exit "${PIPESTATUS[0]}"
