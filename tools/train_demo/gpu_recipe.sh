#!/bin/bash
# The GPU part of the recipe, on the lent GPU machine after `source .gpu-b/setup.sh` (MLX for CUDA): the base
# runs in parallel (torch, bf16), the best one quantized by mlx_lm.convert, and the LoRA adapter on the last 2
# blocks with mlx_lm's trainer. Run from a copy of the repository that holds build/demo/{data,tokenizer};
# writes demo-base.tgz and demo-lora.tgz (and the logs) to $1.
out=${1:?usage: gpu_recipe.sh OUT_DIR}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
for run in short long long-dropout; do
  python3 -m tools.train_demo base --device cuda --run "$run" --threads 4 > "$out/base-$run.log" 2>&1 &
done
wait
tail -n 3 "$out"/base-*.log
python3 -m tools.train_demo quantize 2>&1 | tail -n 3
tar czf "$out/demo-base.tgz" bobby_tui/demo/model build/demo/runs/*/summary.json build/demo/runs/*/train_base.log
python3 -m tools.train_demo lora > "$out/lora.log" 2>&1
tail -n 2 "$out/lora.log"
tar czf "$out/demo-lora.tgz" bobby_tui/demo/adapter build/demo/lora_log-*.json
