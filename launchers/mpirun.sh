#!/usr/bin/env bash
# Train under MPI: launchers/mpirun.sh CONFIG [key.sub=value ...] [-n N] [--hostfile FILE] [-- MPIEXEC_ARGS...]
#
# For clusters where MPI starts the processes. Each rank runs `python -m dist_pretrain train`
# and reads its rank from the launcher (PMI_RANK/PMI_SIZE for MPICH's Hydra, the venv's
# `mpiexec` from pip; OMPI_COMM_WORLD_* for Open MPI's `mpirun`). MPI only starts the
# processes: torch.distributed still meets over TCP (gloo / NCCL, env://), so this script
# exports MASTER_ADDR (the first host of --hostfile, else this machine) and a free MASTER_PORT.
#
# Processes: -n N, else the config's parallel.nproc (after overrides). Which MPI: $MPIEXEC,
# else the venv's mpiexec, else `mpirun`/`mpiexec` on PATH. Arguments after `--` go to it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-$( [ -x "$here/.venv/bin/python" ] && echo "$here/.venv/bin/python" || command -v python3 )}"
usage() { echo "usage: $0 CONFIG [key.sub=value ...] [-n N] [--hostfile FILE] [-- MPIEXEC_ARGS...]" >&2; exit 2; }
[ $# -ge 1 ] || usage
config="$1"; shift
n=""; hostfile=""; overrides=(); extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    -n|-np) n="$2"; shift 2 ;;
    -n=*|-np=*) n="${1#*=}"; shift ;;
    --hostfile|-f) hostfile="$2"; shift 2 ;;
    --hostfile=*) hostfile="${1#*=}"; shift ;;
    --) shift; extra=("$@"); break ;;
    -*) usage ;;
    *) overrides+=("$1"); shift ;;
  esac
done
# Pre-flight: the whole check (config, data, checkpoint, paths) at the world size about to
# start, in one process: an error is printed once and no rank starts (exit 2).
nproc_override=(); world=()
[ -n "$n" ] && world=(--world-size "$n")
[ -n "$n" ] && [ -z "$hostfile" ] && nproc_override=(parallel.nproc="$n")  # all ranks on this node
n_config="$("$py" -m dist_pretrain check "$config" ${overrides[@]+"${overrides[@]}"} \
  ${nproc_override[@]+"${nproc_override[@]}"} ${world[@]+"${world[@]}"} --print parallel.nproc)" || exit 2
n=${n:-$n_config}

mpiexec="${MPIEXEC:-}"
if [ -z "$mpiexec" ]; then
  for candidate in "$(dirname "$py")/mpiexec" "$(command -v mpirun || true)" "$(command -v mpiexec || true)"; do
    [ -n "$candidate" ] && [ -x "$candidate" ] && { mpiexec="$candidate"; break; }
  done
fi
[ -n "$mpiexec" ] || { echo "no mpiexec: install the package (pip's mpich) or an MPI, or set MPIEXEC" >&2; exit 2; }

# Rank 0 runs on the first host of the hostfile (or here): the rendezvous goes there.
if [ -z "${MASTER_ADDR:-}" ]; then
  if [ -n "$hostfile" ]; then
    first=$(grep -v '^\s*\(#\|$\)' "$hostfile" | head -n 1 | awk '{print $1}'); first=${first%%:*}
    MASTER_ADDR=$(getent ahostsv4 "$first" | awk 'NR == 1 {print $1}'); MASTER_ADDR=${MASTER_ADDR:-$first}
  else
    MASTER_ADDR=127.0.0.1
  fi
fi
if [ -z "${MASTER_PORT:-}" ]; then  # a port free here (on other hosts: set MASTER_PORT)
  MASTER_PORT=$("$py" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')
fi
export MASTER_ADDR MASTER_PORT
# intra-op threads: this machine's cores shared by the ranks (unless the caller decided)
if [ -z "${OMP_NUM_THREADS:-}" ]; then
  per=$(( $(nproc) / n )); export OMP_NUM_THREADS=$(( per > 0 ? per : 1 ))
fi
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"

args=(-n "$n")
[ -n "$hostfile" ] && args+=(--hostfile "$hostfile")
if "$mpiexec" --version 2>&1 | grep -q "Open MPI\|OpenRTE"; then
  # Open MPI passes only what -x names to remote ranks; as root it wants explicit consent,
  # and on a small machine more ranks than cores needs --oversubscribe
  args+=(-x MASTER_ADDR -x MASTER_PORT -x OMP_NUM_THREADS -x PYTHONWARNINGS -x PATH)
  [ "$(id -u)" -eq 0 ] && args+=(--allow-run-as-root)
  args+=(--oversubscribe)
fi
nproc_override=()
[ -z "$hostfile" ] && nproc_override=(parallel.nproc="$n")  # all ranks on this node
echo "mpirun.sh: $mpiexec ${args[*]} ${extra[*]+${extra[*]}} (rendezvous $MASTER_ADDR:$MASTER_PORT)" >&2
exec "$mpiexec" "${args[@]}" ${extra[@]+"${extra[@]}"} \
  "$py" -m dist_pretrain train "$config" ${nproc_override[@]+"${nproc_override[@]}"} ${overrides[@]+"${overrides[@]}"}
