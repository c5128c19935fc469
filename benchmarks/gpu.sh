#!/usr/bin/env bash
# GPT ~1.3B training-step benchmark on one H100 / H200 (benchmarks/gpu.py):
#
#   bash benchmarks/gpu.sh --download   # here, with network: wheels the GPU image lacks -> .whl/
#   bash benchmarks/gpu.sh [ARGS]       # there: install .whl/*.whl into /tmp/site, run benchmarks.gpu
#   bash benchmarks/gpu.sh --dry-run    # anywhere: print the plan (config, FLOPs, memory estimate)
#
# The GPU image has torch, numpy, pyyaml, tokenizers, sentencepiece, tensorboard, mpi4py,
# einops, msgpack, ninja, psutil, py-cpuinfo, nvidia-ml-py, tqdm; it lacks what --download
# fetches (cp312 wheels; DeepSpeed has no wheel on PyPI, so one is built from its sdist
# without CUDA ops). Results go to benchmarks/results/<date>-gpu.md.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
py="${PYTHON:-python3}"
wheels=.whl
if [ "${1:-}" = "--download" ]; then
  pip=("${PIP:-$here/.venv/bin/pip}")
  mkdir -p "$wheels"
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
  "${pip[@]}" download -q --no-deps "${plat[@]}" -d "$wheels" megatron-core==0.16.1 \
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection typing-extensions \
    hjson webdataset==1.0.2 braceexpand
  DS_BUILD_OPS=0 "${pip[@]}" wheel -q --no-deps --no-build-isolation -w "$wheels" deepspeed==0.19.8
  ls -la "$wheels"
  exit 0
fi
case " $* " in
  *" --dry-run "*)  # no GPU, no wheels: the project's own environment
    [ -x .venv/bin/python ] && py=.venv/bin/python
    export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
    exec "$py" -m benchmarks.gpu "$@" ;;
esac
if ls "$wheels"/*.whl >/dev/null 2>&1; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$wheels"/*.whl
  export PYTHONPATH="/tmp/site:$here${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}" PYTHONUNBUFFERED=1
status=0
"$py" -m benchmarks.gpu "$@" || status=$?
# on a lent GPU machine of this workplace, files under $OUT come back: bring the report along
if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then cp benchmarks/results/*-gpu.md "$OUT"/ 2>/dev/null || true; fi
exit "$status"
