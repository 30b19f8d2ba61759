#!/usr/bin/env bash
# For a CUDA machine without a package index, run here once: what tools/gpu/run.sh needs there besides MLX for CUDA,
# in the git-ignored .gpu-extra/ (carry it along and copy it to /tmp/.gpu-extra there, or point EXTRA at it): the
# Qwen3 tokenizer files for the benchmark checkpoints and pytest's wheels for the GPU tests. A ptx.tgz from an
# earlier run.sh put there skips compiling MLX's own kernels.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qxF "/.gpu-extra/" .git/info/exclude || echo "/.gpu-extra/" >> .git/info/exclude
mkdir -p .gpu-extra/wheels .gpu-extra/tokenizer
tokenizer_dir=$(.venv/bin/python -c "from tools.bench.checkpoints import qwen_tokenizer_dir; print(qwen_tokenizer_dir())")
cp "$tokenizer_dir"/tokenizer.json "$tokenizer_dir"/tokenizer_config.json .gpu-extra/tokenizer/
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .gpu-extra/wheels \
  pytest pluggy iniconfig packaging pygments
du -sh .gpu-extra
