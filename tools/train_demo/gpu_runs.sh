#!/bin/bash
# Named base runs side by side on one GPU (torch, bf16), each then quantized by mlx_lm.convert and given its LoRA
# adapter by mlx_lm's trainer, all runs at once: what the copy recipes (BASE_RUNS "copy*") are tried with. The targets
# on the CPU then pick the run that ships (MODEL_CARD.md). Run from a copy of the repository that holds
# build/demo/{data,tokenizer} (data with nouns.txt), after `source .gpu-b/setup.sh` (MLX for CUDA).
#   bash tools/train_demo/gpu_runs.sh OUT_DIR RUN...
# Writes OUT_DIR/demo-RUN.tgz per run (its 4-bit model, adapter, summary and logs; never the float checkpoint) and
# OUT_DIR/runs.log. BASE_SECONDS: each run's training time (default 215); BASE_GRACE: what a run has past it to finish
# its last evaluation and save its checkpoint before it is killed (default 45); DEADLINE: seconds from the start by
# which the quantized models and adapters must be done (default 390); INIT_FROM=MODEL_DIR: every run trains on from
# this 4-bit checkpoint (base --init-from); LORA=0: no adapters. SMOKE=1 checks the script on a CPU: 20 steps (the
# tiny shape unless INIT_FROM), 10 LoRA iterations, PYTHON for the interpreter.
out=${1:?usage: gpu_runs.sh OUT_DIR RUN...}
shift
runs=${*:?usage: gpu_runs.sh OUT_DIR RUN...}
python=${PYTHON:-python3}
base_seconds=${BASE_SECONDS:-215}
base_grace=${BASE_GRACE:-45}
deadline=${DEADLINE:-390}
if [ "${SMOKE:-0}" = 1 ]; then
  base_args=(--device cpu --threads 1 --max-steps 20)
  [ -n "${INIT_FROM:-}" ] || base_args+=(--shape tiny)
  lora_args=(--iters 10)
else
  base_args=(--device cuda --threads 3)
  lora_args=()
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
fi
[ -n "${INIT_FROM:-}" ] && base_args+=(--init-from "$INIT_FROM")
runs_dir=build/demo/runs
mkdir -p "$runs_dir"
for run in $runs; do
  mkdir -p "$runs_dir/$run"
  timeout $((base_seconds + base_grace)) "$python" -m tools.train_demo base --run "$run" \
    --max-seconds "$base_seconds" "${base_args[@]}" > "$runs_dir/$run/base.log" 2>&1 &
done
wait
for run in $runs; do
  echo "$run: $(tail -n 1 "$runs_dir/$run/train_base.log" 2>/dev/null)"
done
# Quantizing takes ~20 s on the GPU machine; it gets at most 60 s, and never more than the deadline leaves.
quantize_seconds=$((deadline - SECONDS - 5))
[ "$quantize_seconds" -gt 60 ] && quantize_seconds=60
[ "$quantize_seconds" -lt 10 ] && quantize_seconds=10
for run in $runs; do
  dir=$runs_dir/$run
  [ -f "$dir/model/model.safetensors" ] || { echo "$run: no checkpoint"; continue; }
  timeout "$quantize_seconds" "$python" -m tools.train_demo quantize --run "$run" --out "$dir/model-4bit" \
    > "$dir/quantize.log" 2>&1 &
done
wait
if [ "${LORA:-1}" != 0 ]; then
  # The adapters get what is left before the deadline, so the archives are written whatever happens to them.
  lora_seconds=$((deadline - SECONDS - 15))
  [ "$lora_seconds" -lt 20 ] && lora_seconds=20
  echo "quantized at ${SECONDS} s; LoRA within ${lora_seconds} s"
  for run in $runs; do
    dir=$runs_dir/$run
    [ -f "$dir/model-4bit/config.json" ] || { echo "$run: not quantized"; continue; }
    timeout "$lora_seconds" "$python" -m tools.train_demo lora --model "$dir/model-4bit" --out "$dir/adapter" \
      "${lora_args[@]}" > "$dir/lora.log" 2>&1 &
  done
  wait
fi
for run in $runs; do
  dir=$runs_dir/$run
  echo "$run: $(tail -n 2 "$dir/lora.log" 2>/dev/null | cut -c1-300)"
  tar czf "$out/demo-$run.tgz" -C "$runs_dir" --exclude="$run/model" --exclude="$run/lora-data-*" "$run"
  ls -l "$out/demo-$run.tgz"
done
echo "done at ${SECONDS} s"
