#!/bin/bash
# The GPU part of the recipe, on the lent GPU machine after `source .gpu-b/setup.sh` (MLX for CUDA): the BASE_RUNS
# in parallel (torch, bf16), then each run quantized by mlx_lm.convert. Run from a copy of the repository that holds
# build/demo/{data,tokenizer}; writes one model-RUN.tgz per run (its 4-bit model, summary and training log: ~5 MB,
# small enough to bring back one by one) and logs.tgz to $1. With LORA=1 each run also gets its adapter there
# (mlx_lm's trainer, as `python -m tools.train_demo lora` does on the CPU afterwards for the run the targets pick).
out=${1:?usage: gpu_recipe.sh OUT_DIR}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
runs=$(python3 -c "from tools.train_demo.__main__ import BASE_RUNS; print(' '.join(BASE_RUNS))")
mkdir -p build/demo/logs
for run in $runs; do
  timeout 330 python3 -m tools.train_demo base --device cuda --run "$run" --threads 3 > "build/demo/logs/base-$run.log" 2>&1 &
done
wait
for run in $runs; do
  dir=build/demo/runs/$run
  (python3 -m tools.train_demo quantize --run "$run" --out "$dir/model-4bit" > "build/demo/logs/quantize-$run.log" 2>&1 &&
   if [ "${LORA:-0}" = 1 ]; then timeout 240 python3 -m tools.train_demo lora --model "$dir/model-4bit" \
     --out "$dir/adapter" > "build/demo/logs/lora-$run.log" 2>&1; fi
   tar czf "$out/model-$run.tgz" "$dir"/model-4bit "$dir"/summary.json "$dir"/train_base.log $(ls -d "$dir"/adapter 2>/dev/null)) &
done
wait
tail -qn 1 build/demo/logs/base-*.log
tar czf "$out/logs.tgz" build/demo/logs
