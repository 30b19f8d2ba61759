#!/usr/bin/env bash
# Here, once, after ../shared/tools/gpu-prepare (MLX for CUDA): what the lent GPU machine needs besides MLX, in the
# git-ignored .gpu-extra/: the Qwen3 tokenizer files for the benchmark checkpoints and pytest's wheels for the GPU
# tests (the machine has no package index). Then, per docs/performance.md:
#   call 1, carry [".gpu-a", ".gpu-extra"]: mkdir -p /tmp/gpu-a && cp .gpu-a/part-a /tmp/gpu-a/ && cp -r .gpu-extra /tmp/
#   call 2, carry [".gpu-b"], within 30 s:  bash tools/gpu/run.sh test micro bench
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qxF "/.gpu-extra/" .git/info/exclude || echo "/.gpu-extra/" >> .git/info/exclude
mkdir -p .gpu-extra/wheels .gpu-extra/tokenizer
tokenizer_dir=$(.venv/bin/python -c "from inference.bench import qwen_tokenizer_dir; print(qwen_tokenizer_dir())")
cp "$tokenizer_dir"/tokenizer.json "$tokenizer_dir"/tokenizer_config.json .gpu-extra/tokenizer/
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .gpu-extra/wheels \
  pytest pluggy iniconfig packaging pygments
du -sh .gpu-extra
