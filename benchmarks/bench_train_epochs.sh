#!/usr/bin/env bash
# Epochs of `pointpeft train` on a GPU, at the size of ScanObjectNN OBJ_BG (2,309 training and 581 test clouds
# of 2,048 points, 14 classes, the most synthetic data has), batch 32, the CLI's DAPT recipe, 3 epochs each:
#   1. fp32 (torch's default TF32 settings), compiled (run.compile=auto, run.compile_mode=reduce-overhead),
#      dropout and drop path off (so that 2. computes the same function);
#   2. the same, eager (run.compile=false);
#   3. bf16 autocast, compiled, the recipe's dropout and drop path.
# Prints each run's epoch records (loss, accuracy, and where the time went).
# Run on a GPU from the repository root:  PYTHONPATH=src bash benchmarks/bench_train_epochs.sh [OUT_DIR]
# RUNS="fp32-eager bf16-compiled" (names as above) runs only those.
set -uo pipefail
out=${1:-/tmp/pointpeft-epochs}
common=(data.synthetic_train=2309 data.synthetic_test=581 data.synthetic_points=2048 data.npoints=2048
        data.synthetic_classes=14 optim.batch_size=32 optim.eval_batch_size=83 optim.epochs=3
        optim.warmup_epochs=0 run.progress=false)
no_dropout=(dapt.adapter_dropout=0.0 dapt.head_dropout=0.0 model.drop_path_rate=0.0)
run() {
  local name=$1; shift
  if [[ -n "${RUNS:-}" && " $RUNS " != *" $name "* ]]; then return; fi
  rm -rf "$out/$name"
  echo "## $name: $*"
  timeout 420 python -m pointpeft train "${common[@]}" "$@" run.output_dir="$out/$name" | grep -v "^epoch"
  python - "$out/$name/metrics.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    t = {k: round(v, 2) for k, v in r["time"].items()}
    print(f"  epoch {r['epoch']}: train loss {r['train_loss']:.6f}, test acc {r['test_accuracy']:.2f}, time {t}")
PY
}
run fp32-compiled "${no_dropout[@]}"
run fp32-eager "${no_dropout[@]}" run.compile=false
run bf16-compiled run.bf16=true
