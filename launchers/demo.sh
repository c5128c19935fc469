#!/usr/bin/env bash
# The demo: launchers/demo.sh [gpt|bert|t5|bert-sentiment|t5-text2text] [key.sub=value ...]
# Builds the real-English demo corpus (Wikipedia articles in C4 layout) and the family's
# shards if missing, then pretrains the small model of configs/<family>/demo.yaml on two
# processes: GPT with TP=2 (GPT-2 BPE, packed sequences), BERT with TP=2 (WordPiece,
# masked LM), T5 with PP=2 (SentencePiece trained on the corpus, span corruption). GPT and T5
# end with a greedy continuation of a fixed prompt by the model just trained.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
py=".venv/bin/python"; [ -x "$py" ] || py=python3
family=gpt
case "${1:-}" in gpt|bert|t5|bert-sentiment|t5-text2text) family="$1"; shift ;; esac
dp=("$py" -m dist_pretrain)
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"  # megatron-core warns that GPU-only Apex / TE are absent
[ -f data/demo/c4/en/c4-validation.00000-of-00001.json.gz ] || "${dp[@]}" demo-corpus --output data/demo
if [ "$family" = bert-sentiment ]; then
  # Fine-tuning: the BERT of configs/bert/demo.yaml (pretrained here first if runs/bert-demo has no
  # checkpoint) and the same BERT from scratch, on Pang & Lee's polarity sentences; then the table.
  [ -f runs/bert-demo/checkpoints/latest ] || "$0" bert
  data=data/demo/sentiment-sentences64
  [ -f data/demo/finetune/sentiment/sentences.jsonl ] || "${dp[@]}" finetune-data --what sentiment \
    --output data/demo/finetune
  [ -f "$data/manifest.json" ] || "${dp[@]}" preprocess --format classification --tokenizer bert --seq-len 64 \
    --input data/demo/finetune/sentiment/sentences.jsonl --val-fraction 0.1 --test-fraction 0.1 --output "$data"
  # the shipped config's budget (2 epochs), in its own run_dir; arguments after bert-sentiment override
  demo=(run_dir=runs/bert-sentiment-demo)
  exec "$py" -m benchmarks.finetune_compare configs/bert/sentiment.yaml "${demo[@]}" "$@" --seeds 1234
fi
if [ "$family" = t5-text2text ]; then
  # Fine-tuning: the T5 of configs/t5/demo.yaml (pretrained first if needed) on WordNet
  # definitions and Wikipedia section headings, and the same T5 from scratch; then the table.
  [ -f runs/t5-demo/checkpoints/latest ] || "$0" t5
  data=data/demo/text2text-128
  [ -f data/demo/finetune/text2text/define.jsonl ] || "${dp[@]}" finetune-data --what text2text \
    --corpus data/demo --output data/demo/finetune
  [ -f "$data/manifest.json" ] || "${dp[@]}" preprocess --format seq2seq --tokenizer data/demo/spm/spiece.model \
    --seq-len 128 --target-len 32 --input 'data/demo/finetune/text2text/*.jsonl' --val-fraction 0.04 \
    --test-fraction 0.04 --output "$data"
  # the shipped config's budget (1 epoch at DP=2 in bf16, validation at step 100 and at the epoch
  # end), in its own run_dir. Greedy validation decodes with KV caches: one pass over the 211
  # validation pairs costs 3-7 s here. Arguments after t5-text2text override, e.g. train.epochs=2.
  demo=(run_dir=runs/t5-text2text-demo)
  exec "$py" -m benchmarks.finetune_compare configs/t5/text2text.yaml "${demo[@]}" "$@" --seeds 1234
fi
inputs=(--input 'data/demo/c4/en/*.json.gz')
case "$family" in
  gpt)
    data=data/demo/gpt2-seq256
    [ -f "$data/manifest.json" ] || "${dp[@]}" preprocess "${inputs[@]}" --tokenizer gpt2 \
      --seq-len 256 --samples-per-shard 128 --output "$data" ;;
  bert)
    data=data/demo/bert-docs128
    [ -f "$data/manifest.json" ] || "${dp[@]}" preprocess "${inputs[@]}" --tokenizer bert \
      --format docs --seq-len 126 --samples-per-shard 256 --output "$data" ;;
  t5)
    data=data/demo/t5-docs128
    [ -f data/demo/spm/spiece.model ] || "${dp[@]}" tokenizer train --kind sentencepiece \
      --input 'data/demo/c4/en/c4-train.*.json.gz' --vocab-size 8000 --sentinels 100 --output data/demo/spm
    [ -f "$data/manifest.json" ] || "${dp[@]}" preprocess "${inputs[@]}" \
      --tokenizer data/demo/spm/spiece.model --format docs --seq-len 512 --samples-per-shard 256 \
      --output "$data" ;;
esac
launchers/torchrun.sh "configs/$family/demo.yaml" "$@"
run_dir="$("$py" -c 'import sys; from dist_pretrain.config import load_config; print(load_config(sys.argv[1], sys.argv[2:]).run_dir)' "configs/$family/demo.yaml" "$@")"
# what the model it just trained makes of a fixed prompt (greedy, from the final checkpoint, one process)
case "$family" in
  gpt) prompt="The city is located on the" ;;
  t5) prompt="The city is located on the <extra_id_0> of the river." ;;
  *) prompt="" ;;
esac
if [ -n "$prompt" ]; then
  echo
  echo "Greedy continuation by the trained model (dist-pretrain generate $run_dir --greedy):"
  "${dp[@]}" generate "$run_dir" --prompt "$prompt" --greedy --max-new-tokens 24
fi
echo
echo "TensorBoard logs: $run_dir/tensorboard"
echo "Open them with:   .venv/bin/tensorboard --logdir $run_dir/tensorboard --port 6006   (then browse http://localhost:6006)"
