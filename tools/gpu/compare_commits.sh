#!/usr/bin/env bash
# Before and after: the engines of two commits, measured by this tree's benchmark (tools/bench/engine.py, which also
# drives an engine from before EngineOptions), in alternating rounds within one run, so the host's drift hits both alike.
#   here, from the repository root:  bash tools/gpu/compare_commits.sh prepare OLD [NEW]
#       writes .device/compare/{old,new} (each: that commit's inference/ beside this tree's tools/) and the Qwen3
#       tokenizer files; .device/ is git-ignored (add `/.device/` to .git/info/exclude once)
#   on the CUDA machine, with MLX for CUDA importable:  bash tools/gpu/compare_commits.sh run [ROUNDS]
#       SHAPES (default 8B), BATCHES (default 1,4,8), DECODE (default 256 tokens); logs and JSON go to $OUT
set -euo pipefail
step=${1:?usage: compare_commits.sh prepare OLD [NEW] | run [ROUNDS]}
dir=.device/compare
case $step in
  prepare)
    old=${2:?the old commit}; new=${3:-HEAD}
    rm -rf "$dir" && mkdir -p "$dir"/old "$dir"/new "$dir"/tokenizer
    git archive "$old" inference | tar x -C "$dir"/old
    git archive "$new" inference tools | tar x -C "$dir"/new
    cp -r "$dir"/new/tools "$dir"/old/
    tokenizer=$(${PYTHON:-.venv/bin/python} -c "from tools.bench.checkpoints import qwen_tokenizer_dir; print(qwen_tokenizer_dir())")
    cp "$tokenizer"/tokenizer.json "$tokenizer"/tokenizer_config.json "$dir"/tokenizer/
    printf '%s\n%s\n' "$(git rev-parse --short "$old")" "$(git rev-parse --short "$new")" > "$dir"/commits
    du -sh "$dir"
    ;;
  run)
    rounds=${2:-2}
    out=${OUT:-$dir/results}
    mkdir -p "$out"
    root=$PWD
    for round in $(seq "$rounds"); do
      for side in old new; do
        echo "== round $round: $side ($(sed -n "$([ $side = old ] && echo 1 || echo 2)p" "$dir"/commits))"
        (cd "$dir/$side" && timeout 280 "${PYTHON:-python3}" -m tools.bench.engine --shapes "${SHAPES:-8B}" --engines ours \
           --batches "${BATCHES:-1,4,8}" --repeats 1 --decode-tokens "${DECODE:-256}" --cache-dir /tmp/bench-cache \
           --tokenizer-dir "$root/$dir/tokenizer" --json "$out/$side-$round.json" 2>&1 | grep "^|" || true)
      done
    done
    "${PYTHON:-python3}" - "$out" <<'EOF'
import json, statistics, sys
from pathlib import Path

by = {}
for path in sorted(Path(sys.argv[1]).glob("*-*.json")):
    side = path.name.split("-")[0]
    for row in json.loads(path.read_text())["rows"]:
        for batch, run in row["runs"].items():
            by.setdefault((row["shape"], row["adapter"], int(batch)), {}).setdefault(side, []).append(run["decode_tok_s"])
print("\n| shape | adapter | N | old tok/s (runs) | new tok/s (runs) | new / old |\n|---|---|---|---|---|---|")
for (shape, adapter, batch), sides in sorted(by.items()):
    old, new = sides.get("old", []), sides.get("new", [])
    ratio = f"{statistics.median(new) / statistics.median(old):.2f}" if old and new else "-"
    show = lambda v: f"{statistics.median(v):.0f} ({', '.join(f'{x:.0f}' for x in v)})" if v else "-"
    print(f"| {shape} | {'lora' if adapter else '-'} | {batch} | {show(old)} | {show(new)} | {ratio} |")
EOF
    ;;
  *) echo "compare_commits.sh: unknown step $step (prepare, run)" >&2; exit 2 ;;
esac
