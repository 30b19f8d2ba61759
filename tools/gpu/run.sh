#!/usr/bin/env bash
# On the lent GPU machine (call 2 of docs/performance.md's recipe): bash tools/gpu/run.sh STEP...
#   test   the GPU-only tests (tests/test_cuda_kernels.py)
#   micro  python -m inference.bench_gemv (SWEEP=2048,4096,8192 compares targets for the warps in flight first)
#   cold   tools/gpu/cold_start.py twice, in fresh processes: the first generation's phases, cold and warm
#   bench  python -m inference.bench (SHAPES, ENGINES, BATCHES, REPEATS; defaults below)
# Results go to $OUT, with MLX's compiled kernels (ptx.tgz): copy that to .gpu-extra/ to skip compiling next time.
source .gpu-b/setup.sh || exit 3
extra=/tmp/.gpu-extra
[ -d /tmp/mlx-site/pytest ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/mlx-site "$extra"/wheels/*.whl
[ -d /tmp/mlx ] || [ ! -f "$extra"/ptx.tgz ] || tar xzf "$extra"/ptx.tgz -C /tmp
export BOBBY_TEST_TOKENIZER_DIR="$extra"/tokenizer
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for step in "$@"; do
  case $step in
    test) timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_kernels.py 2>&1 | tail -25 ;;
    micro) timeout 300 python3 -m inference.bench_gemv --shapes 8B ${SWEEP:+--sweep $SWEEP} --json "$OUT"/gemv.json \
             2>&1 | tee "$OUT"/gemv.log ;;
    cold) for run in 1 2; do timeout 150 python3 tools/gpu/cold_start.py --tokenizer-dir "$extra"/tokenizer \
             2>&1 | tee -a "$OUT"/cold.log | grep "^|"; done ;;
    bench) timeout 520 python3 -m inference.bench --shapes "${SHAPES:-8B}" --cache-dir /tmp/bench-cache \
             --tokenizer-dir "$extra"/tokenizer --engines "${ENGINES:-ours,mlx_lm}" --repeats "${REPEATS:-3}" \
             --batches "${BATCHES:-1,4,8}" --json "$OUT"/bench.json 2>&1 | tee "$OUT"/bench.log | grep -v "^bench:" ;;
    *) echo "run.sh: unknown step $step (test, micro, cold, bench)" >&2; exit 2 ;;
  esac
done
tar czf "$OUT"/ptx.tgz -C /tmp mlx
