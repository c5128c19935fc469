#!/usr/bin/env bash
# The GPU path on one H100 / H200 (benchmarks/gpu_checks.py, benchmarks/gpu.py):
#
#   bash benchmarks/gpu.sh --download          # here, with network: wheels the GPU image lacks -> .whl/,
#                                              # the GPT demo shards -> .gpu_data/gpt2-seq256
#   bash benchmarks/gpu.sh --all [ARGS]        # there: install .whl/*.whl into /tmp/site, run every check
#                                              # (benchmarks.gpu_checks: correctness on the GPU, the demo,
#                                              # GPT-1.3B tokens/s and MFU); report -> benchmarks/results
#                                              # and $OUT. ARGS: --compile on|both, --only CHECK..., ...
#   bash benchmarks/gpu.sh --all --device cpu  # the same checks on gloo here (smoke test, no GPU)
#   bash benchmarks/gpu.sh --all --dry-run     # anywhere: print the plan
#   bash benchmarks/gpu.sh [ARGS]              # there: only the GPT-1.3B benchmark (benchmarks.gpu)
#
# The GPU image has torch, numpy, pyyaml, tokenizers, sentencepiece, tensorboard, psutil, tqdm; it
# lacks what --download fetches (cp312 wheels of megatron-core, pydantic, webdataset, DeepSpeed's
# dependencies; DeepSpeed has no wheel on PyPI, so one is built from its sdist without CUDA ops).
# The demo shards are built here because the corpus comes from gensim's wheel: carry .whl and .gpu_data.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
py="${PYTHON:-python3}"
wheels=.whl
module=benchmarks.gpu
if [ "${1:-}" = "--download" ]; then
  pip=("${PIP:-$here/.venv/bin/pip}")
  mkdir -p "$wheels"
  plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
  "${pip[@]}" download -q --no-deps "${plat[@]}" -d "$wheels" megatron-core==0.16.1 \
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection typing-extensions \
    hjson webdataset==1.0.2 braceexpand einops msgpack ninja py-cpuinfo nvidia-ml-py 'packaging>=24.2'
  [ -f "$wheels"/deepspeed-0.19.8-py3-none-any.whl ] ||
    DS_BUILD_OPS=0 "${pip[@]}" wheel -q --no-deps --no-build-isolation -w "$wheels" deepspeed==0.19.8
  ls -la "$wheels"
  vpy=.venv/bin/python; [ -x "$vpy" ] || vpy=python3
  if [ ! -f .gpu_data/gpt2-seq256/manifest.json ]; then
    PYTHONPATH="$here" "$vpy" -m dist_pretrain demo-corpus --output .gpu_data/corpus
    PYTHONPATH="$here" "$vpy" -m dist_pretrain preprocess --input '.gpu_data/corpus/c4/en/*.json.gz' \
      --tokenizer gpt2 --seq-len 256 --samples-per-shard 128 --output .gpu_data/gpt2-seq256
    rm -rf .gpu_data/corpus
  fi
  du -sh "$wheels" .gpu_data
  exit 0
fi
if [ "${1:-}" = "--all" ]; then module=benchmarks.gpu_checks; shift; fi
case " $* " in
  *" --dry-run "*|*" --device cpu "*)  # no GPU, no wheels: the project's own environment
    [ -x .venv/bin/python ] && py=.venv/bin/python
    export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
    exec "$py" -m "$module" "$@" ;;
esac
if ls "$wheels"/*.whl >/dev/null 2>&1; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$wheels"/*.whl
  export PYTHONPATH="/tmp/site:$here${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
status=0
"$py" -m "$module" "$@" || status=$?
# on a lent GPU machine of this workplace, files under $OUT come back: bring the reports along
if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then cp benchmarks/results/*-gpu.* "$OUT"/ 2>/dev/null || true; fi
exit "$status"
