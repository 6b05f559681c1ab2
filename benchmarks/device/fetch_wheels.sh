#!/usr/bin/env bash
# Here, on a machine with pip and the package registries: the wheels the lent H200 lacks, for its
# Python 3.12. onnxruntime-gpu (~255 MB) is cut into parts that each fit one device call's carry
# (64 MiB with the working tree); the calls that carry them are printed at the end (README.md).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
ORT_VERSION=${ORT_VERSION:-1.31.1}
GRAPHSURGEON_VERSION=${GRAPHSURGEON_VERSION:-0.6.1}
PART_MIB=${PART_MIB:-60}
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}

git check-ignore -q .whl/x || { echo ".whl/ must be git-ignored" >&2; exit 1; }
rm -rf .whl && mkdir -p .whl/full
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "${PY_VERSION:-3.12}" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl/full "onnxruntime-gpu==$ORT_VERSION" "onnx-graphsurgeon==$GRAPHSURGEON_VERSION"
mv .whl/full/onnx_graphsurgeon-*.whl .whl/
wheel=$(cd .whl/full && ls onnxruntime_gpu-*.whl)
(cd .whl/full && sha256sum "$wheel") > ".whl/$wheel.sha256"
split -b "${PART_MIB}M" -d -a 2 ".whl/full/$wheel" ".whl/$wheel.part-"
rm -rf .whl/full

parts=(.whl/"$wheel".part-*)
echo "device calls (each right after the last: parts stay only while the machine is warm, ~30 s):"
echo "  1. carry [\"$(ls .whl/onnx_graphsurgeon-*.whl)\", \".whl/$wheel.sha256\", \"${parts[0]}\"]  command: ls -l .whl"
for ((i = 1; i < ${#parts[@]} - 1; i++)); do
    echo "  $((i + 1)). carry [\"${parts[i]}\"]  command: ls -l .whl"
done
echo "  ${#parts[@]}. carry [\"${parts[-1]}\"]  command: bash benchmarks/device/h200.sh  timeout_s: 560"
