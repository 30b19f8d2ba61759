#!/bin/bash
# The GPU part of the recipe, on the lent GPU machine after `source .gpu-b/setup.sh` (MLX for CUDA): the BASE_RUNS
# in parallel (torch, bf16), then each run quantized by mlx_lm.convert and given its LoRA adapter on the last 2
# blocks by mlx_lm's trainer (in parallel too). Run from a copy of the repository that holds build/demo/{data,tokenizer};
# writes demo-runs.tgz (every run's 4-bit model, adapter, summary and logs) and the logs to $1. The targets on the
# CPU then pick the run that ships (MODEL_CARD.md, Rebuilding).
out=${1:?usage: gpu_recipe.sh OUT_DIR}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
runs=$(python3 -c "from tools.train_demo.__main__ import BASE_RUNS; print(' '.join(BASE_RUNS))")
for run in $runs; do
  timeout 360 python3 -m tools.train_demo base --device cuda --run "$run" --threads 3 > "$out/base-$run.log" 2>&1 &
done
wait
tail -n 2 "$out"/base-*.log
for run in $runs; do
  dir=build/demo/runs/$run
  (python3 -m tools.train_demo quantize --run "$run" --out "$dir/model-4bit" > "$out/quantize-$run.log" 2>&1 &&
   timeout 240 python3 -m tools.train_demo lora --model "$dir/model-4bit" --out "$dir/adapter" > "$out/lora-$run.log" 2>&1) &
done
wait
tail -n 1 "$out"/lora-*.log
tar czf "$out/demo-runs.tgz" build/demo/runs/*/model-4bit build/demo/runs/*/adapter build/demo/runs/*/summary.json \
  build/demo/runs/*/*.log build/demo/runs/*/lora_log-*.json
