#!/usr/bin/env bash
# Train on one node: launchers/torchrun.sh CONFIG [key.sub=value ...] [--nproc N]
# Processes per node come from --nproc, else the config's parallel.nproc (after overrides).
# The config is checked first (`dist-pretrain check`); a job that fails ends in one line.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-$( [ -x "$here/.venv/bin/python" ] && echo "$here/.venv/bin/python" || command -v python3 )}"
[ $# -ge 1 ] || { echo "usage: $0 CONFIG [key.sub=value ...] [--nproc N]" >&2; exit 2; }
config="$1"; shift
nproc=""; overrides=()
while [ $# -gt 0 ]; do
  case "$1" in
    --nproc) [ $# -ge 2 ] || { echo "error: --nproc needs a process count" >&2; exit 2; }; nproc="$2"; shift 2 ;;
    --nproc=*) nproc="${1#*=}"; shift ;;
    *) overrides+=("$1"); shift ;;
  esac
done
# Pre-flight: the whole check (config, data, checkpoint, paths) at the world size about to
# start, in one process: an error is printed once and nothing starts (exit 2).
nproc_override=()
[ -n "$nproc" ] && nproc_override=(parallel.nproc="$nproc")
nproc="$("$py" -m dist_pretrain check "$config" ${overrides[@]+"${overrides[@]}"} \
  ${nproc_override[@]+"${nproc_override[@]}"} --print parallel.nproc)" || exit 2
# one intra-op thread per core share, unless the caller decided
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( $(nproc) / nproc > 0 ? $(nproc) / nproc : 1 ))}"
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"
# torchrun (dist_pretrain.torchrun: torchrun with a meaningful exit status) forwards these
# signals to the ranks, which save at the next step boundary; it waits up to
# TORCHRUN_SHUTDOWN_TIMEOUT s (100) for them, then exits with checkpoint.exit_code (99).
exec "$py" -m dist_pretrain.torchrun --standalone --nproc-per-node "$nproc" \
  --signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 \
  --shutdown-timeout="${TORCHRUN_SHUTDOWN_TIMEOUT:-100}" \
  -m dist_pretrain train "$config" parallel.nproc="$nproc" ${overrides[@]+"${overrides[@]}"}
