#!/usr/bin/env bash
# The demo: build the real-English demo corpus (C4 layout) and its GPT-2 shards if
# missing, then pretrain the small GPT of configs/gpt/demo.yaml with TP=2 on two
# processes. Extra arguments are config overrides, e.g. train.precision=fp32.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
py=".venv/bin/python"; [ -x "$py" ] || py=python3
if [ ! -f data/demo/gpt2-seq256/manifest.json ]; then
  "$py" -m dist_pretrain demo-corpus --output data/demo
  "$py" -m dist_pretrain preprocess --input 'data/demo/c4/en/*.json.gz' --tokenizer gpt2 \
    --seq-len 256 --samples-per-shard 128 --output data/demo/gpt2-seq256
fi
launchers/torchrun.sh configs/gpt/demo.yaml "$@"
run_dir="$("$py" -c 'import sys; from dist_pretrain.config import load_config; print(load_config("configs/gpt/demo.yaml", sys.argv[1:]).run_dir)' "$@")"
echo
echo "TensorBoard logs: $run_dir/tensorboard"
echo "Open them with:   .venv/bin/tensorboard --logdir $run_dir/tensorboard --port 6006   (then browse http://localhost:6006)"
