#!/usr/bin/env bash
# On a CUDA machine with MLX for CUDA (`pip install mlx-cuda-13`), from the repository root: bash tools/gpu/run.sh STEP...
#   test   the GPU tests (tests/test_cuda_kernels.py)
#   micro  python -m tools.bench.kernels (SWEEP=2048,4096,8192 compares targets for the warps in flight first)
#   cold   python -m tools.gpu.cold_start twice, in fresh processes: the first generation's phases, cold and warm
#   bench  python -m tools.bench.engine (SHAPES, ENGINES, BATCHES, REPEATS, CACHE_DIR; defaults below)
#   serve  python -m tools.bench.server_load on a random 8B checkpoint, ours and mlx_lm.server (CLIENTS, TOKENS;
#          SERVE_FLAGS="--seeds" then SERVE_FLAGS="--only-mlx-lm" split one run over two calls under their time limit)
# Logs and JSON go to $OUT (default .bench-cache/gpu-results/), with MLX's compiled kernels (ptx.tgz, from MLX_PTX_CACHE_DIR's
# default place): unpack it into /tmp on the next machine to skip compiling MLX's own kernels.
# A machine without a package index: if .gpu-b/setup.sh is there it installs MLX for CUDA from carried wheels, and
# EXTRA (default /tmp/.gpu-extra, made by tools/gpu/prepare.sh) holds the tokenizer files, pytest's wheels and ptx.tgz.
set -o pipefail
if [ -f .gpu-b/setup.sh ]; then source .gpu-b/setup.sh || exit 3; fi
PYTHON=${PYTHON:-python3}
OUT=${OUT:-.bench-cache/gpu-results}
mkdir -p "$OUT"
extra=${EXTRA:-/tmp/.gpu-extra}
tokenizer=()
if [ -d "$extra" ]; then
  [ ! -d "$extra"/wheels ] || "$PYTHON" -c "import pytest" 2>/dev/null ||
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target /tmp/mlx-site "$extra"/wheels/*.whl
  [ -d /tmp/mlx ] || [ ! -f "$extra"/ptx.tgz ] || tar xzf "$extra"/ptx.tgz -C /tmp
  export BOBBY_TEST_TOKENIZER_DIR="$extra"/tokenizer
  tokenizer=(--tokenizer-dir "$extra"/tokenizer)
fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for step in "$@"; do
  case $step in
    test) timeout 300 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_cuda_kernels.py 2>&1 | tee "$OUT"/test.log | tail -25 ;;
    micro) timeout 300 "$PYTHON" -m tools.bench.kernels --shapes 8B ${SWEEP:+--sweep $SWEEP} --json "$OUT"/gemv.json \
             2>&1 | tee "$OUT"/gemv.log ;;
    cold) for run in 1 2; do timeout 150 "$PYTHON" -m tools.gpu.cold_start --cache-dir "${CACHE_DIR:-.bench-cache}" \
             "${tokenizer[@]}" 2>&1 | tee -a "$OUT"/cold.log | grep "^|"; done ;;
    bench) timeout 520 "$PYTHON" -m tools.bench.engine --shapes "${SHAPES:-8B}" --cache-dir "${CACHE_DIR:-.bench-cache}" \
             "${tokenizer[@]}" --engines "${ENGINES:-ours,mlx_lm}" --repeats "${REPEATS:-3}" \
             --batches "${BATCHES:-1,4,8}" --json "$OUT"/bench.json 2>&1 | tee "$OUT"/bench.log | grep -v "^bench:" ;;
    serve) model=${CACHE_DIR:-.bench-cache}/8B
           "$PYTHON" -c "import sys; from pathlib import Path; from tools.bench.checkpoints import SHAPES, \
qwen_tokenizer_dir, write_checkpoint; write_checkpoint(Path(sys.argv[1]), SHAPES['8B'], \
tokenizer_dir=Path(sys.argv[2]) if len(sys.argv) > 2 else qwen_tokenizer_dir(), reuse=True)" "$model" \
             ${tokenizer[1]:+"${tokenizer[1]}"} &&
           timeout 500 "$PYTHON" -m tools.bench.server_load --model "$model" --max-tokens "${TOKENS:-128}" \
             --clients "${CLIENTS:-1,4,8,16,32}" ${SERVE_FLAGS:---mlx-lm --seeds} 2>&1 | tee -a "$OUT"/serve.log ;;
    *) echo "run.sh: unknown step $step (test, micro, cold, bench, serve)" >&2; exit 2 ;;
  esac
done
[ ! -d /tmp/mlx ] || tar czf "$OUT"/ptx.tgz -C /tmp mlx
