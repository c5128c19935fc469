#!/usr/bin/env bash
# A private Slurm cluster on this one machine, for the tests and for trying the sbatch
# scripts: one slurmctld and N slurmd daemons faking nodes n1..nN (all on 127.0.0.1).
#
#   slurm/local_cluster.sh install                    # Debian's Slurm + munge (as root, ~20 s)
#   slurm/local_cluster.sh start --nodes 2 --dir DIR  # config, daemons, wait until nodes are idle
#   source DIR/slurm.env && sinfo && sbatch ...       # clients find the cluster via SLURM_CONF
#   slurm/local_cluster.sh status --dir DIR
#   slurm/local_cluster.sh stop --dir DIR             # cancels its jobs, stops its daemons
#
# Nothing under /etc is touched: slurm.conf, the munge key and socket, state, spool, logs
# and pid files all live under DIR, and `stop` signals only the pids recorded there, so
# several clusters (or a real Slurm) can coexist. Runs as root without systemd or cgroups
# (proctrack/linuxproc, task/none), as containers and CI machines allow.
# Options of start: --cpus C (CPUs declared per node, default 4; more than the host has is
# fine, slurmd takes the declared count with SlurmdParameters=config_overrides),
# --auth munge|none (default munge when munged is installed).
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client munge libpmix-dev)

die() { echo "local_cluster: $*" >&2; exit 1; }
log() { echo "local_cluster: $*" >&2; }

usage() {
  sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

have_slurm() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null
}

cmd_install() {
  # libpmix-dev: Slurm's mpi/pmix plugin dlopens libpmix (srun --mpi=pmix for Open MPI)
  if command -v dpkg >/dev/null && dpkg -s "${PACKAGES[@]}" >/dev/null 2>&1; then
    log "Slurm is installed: $(slurmctld -V)"
    return 0
  fi
  if ! command -v apt-get >/dev/null || [ "$(id -u)" -ne 0 ]; then
    have_slurm && command -v munged >/dev/null && { log "using the installed $(slurmctld -V)"; return 0; }
    die "installing ${PACKAGES[*]} needs root and apt-get; install Slurm >= 22.05 and munge yourself"
  fi
  export DEBIAN_FRONTEND=noninteractive
  # an empty or stale package cache (fresh machines, containers) finds nothing: update first
  if ! apt-cache show slurmd >/dev/null 2>&1; then apt-get update -qq; fi
  apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null; }
  have_slurm || die "apt-get install ${PACKAGES[*]} finished but slurmctld/slurmd/sbatch are not on PATH"
  log "installed $(slurmctld -V)"
}

# N+1 consecutive free TCP ports on 127.0.0.1 (slurmctld, then one per slurmd), starting
# from a base derived from DIR so that two clusters rarely even try the same ones.
free_ports() {
  local count=$1 dir=$2
  python3 - "$count" "$dir" <<'EOF'
import socket, sys, zlib
count, seed = int(sys.argv[1]), zlib.crc32(sys.argv[2].encode())
def free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
for i in range(2000):
    base = 20000 + (seed + 37 * i) % 20000
    if all(free(p) for p in range(base, base + count)):
        print(base)
        sys.exit(0)
sys.exit("no free ports")
EOF
}

pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

cmd_start() {
  local nodes=2 dir="" cpus=4 auth=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --nodes) nodes=$2; shift 2 ;;
      --dir) dir=$2; shift 2 ;;
      --cpus) cpus=$2; shift 2 ;;
      --auth) auth=$2; shift 2 ;;
      *) usage ;;
    esac
  done
  [ -n "$dir" ] || die "start needs --dir DIR"
  [[ "$nodes" =~ ^[1-9][0-9]*$ ]] || die "--nodes must be a positive integer (got $nodes)"
  have_slurm || cmd_install
  [ "$(id -u)" -eq 0 ] || die "the local cluster runs its daemons as root (SlurmdUser=root); run as root"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  if [ -f "$dir/run/slurmctld.pid" ] && pid_alive "$(cat "$dir/run/slurmctld.pid")"; then
    die "a cluster is already running in $dir (stop it first: $0 stop --dir $dir)"
  fi
  if [ -z "$auth" ]; then command -v munged >/dev/null && auth=munge || auth=none; fi
  chmod 755 "$dir"  # job steps run as root, but munged checks the path to its key
  mkdir -p "$dir"/{state,spool,log,run,tmp}
  local n
  for n in $(seq 1 "$nodes"); do mkdir -p "$dir/tmp/n$n" "$dir/spool/n$n"; done

  local base; base=$(free_ports $((nodes + 1)) "$dir")
  local ctld_port=$base first=$((base + 1)) last=$((base + nodes))
  local host; host=$(hostname -s)

  local authconf
  if [ "$auth" = munge ]; then
    # a private munged: its own key, socket, pid, log and seed under DIR
    mkdir -p "$dir/munge"
    chmod 700 "$dir/munge"  # munged refuses a key others can read
    [ -s "$dir/munge/munge.key" ] || head -c 1024 /dev/urandom >"$dir/munge/munge.key"
    chmod 400 "$dir/munge/munge.key"
    munged --force --key-file="$dir/munge/munge.key" --socket="$dir/run/munge.socket" \
      --pid-file="$dir/run/munged.pid" --log-file="$dir/log/munged.log" \
      --seed-file="$dir/munge/munged.seed" || die "munged did not start (see $dir/log/munged.log)"
    authconf="AuthType=auth/munge
AuthInfo=socket=$dir/run/munge.socket,cred_expire=5
CredType=cred/munge"
  else
    authconf="AuthType=auth/none
AuthInfo=cred_expire=5
CredType=cred/none"
  fi

  cat >"$dir/slurm.conf" <<EOF
# Written by slurm/local_cluster.sh: a private $nodes-node cluster on this host.
ClusterName=local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmUser=root
SlurmdUser=root
# cred_expire also delays a requeued job's restart (default 120 s): short for a local cluster
$authconf
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
# no systemd / cgroups here: track job processes by parentage, no CPU binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# nodes declare more CPUs than the host has (the fake nodes share its cores)
SlurmdParameters=config_overrides
# a node that went down (daemon restart) comes back by itself
ReturnToService=2
MpiDefault=none
# per-node tmp: the pmix plugin keeps its per-job dirs there and fake nodes would collide
TmpFS=$dir/tmp/%n
# no slurmdbd: job states from 'scontrol show job' (kept an hour) and the jobcomp file
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.txt
MinJobAge=3600
JobRequeue=1
KillWait=30
MailProg=/bin/true
SchedulerParameters=sched_interval=2
NodeName=n[1-$nodes] NodeAddr=127.0.0.1 Port=[$first-$last] CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  [ "$nodes" -gt 1 ] || sed -i "s/^NodeName=n\[1-1\] \(.*\) Port=\[$first-$last\]/NodeName=n1 \1 Port=$first/" "$dir/slurm.conf"

  export SLURM_CONF="$dir/slurm.conf"
  # -c: a fresh cluster, no jobs or node states from an earlier start in this DIR
  slurmctld -c -f "$SLURM_CONF" || die "slurmctld did not start (see $dir/log/slurmctld.log)"
  for n in $(seq 1 "$nodes"); do
    slurmd -f "$SLURM_CONF" -N "n$n" || die "slurmd -N n$n did not start (see $dir/log/slurmd-n$n.log)"
  done

  cat >"$dir/slurm.env" <<EOF
# source me: Slurm clients (sbatch, srun, squeue, scontrol...) then use the local cluster
export SLURM_CONF="$dir/slurm.conf"
case ":\$PATH:" in *:/usr/sbin:*) ;; *) export PATH="\$PATH:/usr/sbin" ;; esac
EOF

  # wait until every node registered and is idle
  local deadline=$((SECONDS + 60)) states=""
  while [ $SECONDS -lt $deadline ]; do
    states=$(sinfo -h -N -o '%N %T' 2>/dev/null | sort -u || true)
    if [ "$(grep -c ' idle$' <<<"$states" || true)" -eq "$nodes" ]; then
      log "cluster up in $dir: $nodes nodes idle (slurmctld on port $ctld_port, auth/$auth); source $dir/slurm.env"
      return 0
    fi
    sleep 0.5
  done
  log "nodes not idle after 60 s: $(tr '\n' ' ' <<<"$states")"
  tail -n 20 "$dir"/log/slurm*.log >&2 || true
  cmd_stop --dir "$dir"
  exit 1
}

# end the daemons named by these pid files, each only if that pid still runs the program we
# started (a stale pid file must not kill a stranger): SIGTERM to all, SIGKILL after 5 s
stop_pids() {
  local prog=$1 file pid pids=()
  shift
  for file in "$@"; do
    [ -f "$file" ] || continue
    pid=$(cat "$file" 2>/dev/null || true)
    if pid_alive "$pid" && grep -q "$prog" "/proc/$pid/comm" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
    rm -f "$file"
  done
  local _
  for _ in $(seq 1 50); do
    local left=()
    for pid in ${pids[@]+"${pids[@]}"}; do pid_alive "$pid" && left+=("$pid"); done
    [ ${#left[@]} -eq 0 ] && return 0
    sleep 0.1
  done
  for pid in ${left[@]+"${left[@]}"}; do kill -KILL "$pid" 2>/dev/null || true; done
}

cmd_stop() {
  local dir=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --dir) dir=$2; shift 2 ;;
      *) usage ;;
    esac
  done
  [ -n "$dir" ] || die "stop needs --dir DIR"
  [ -d "$dir" ] || die "no such directory: $dir"
  dir="$(cd "$dir" && pwd)"
  export SLURM_CONF="$dir/slurm.conf"
  # jobs first: their processes hang off slurmstepd, which outlives slurmd
  if [ -f "$dir/run/slurmctld.pid" ] && pid_alive "$(cat "$dir/run/slurmctld.pid")"; then
    local jobs; jobs=$(squeue -h -o %i 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      local deadline=$((SECONDS + 30))
      while [ -n "$(squeue -h -o %i 2>/dev/null || true)" ] && [ $SECONDS -lt $deadline ]; do sleep 0.5; done
    fi
  fi
  # the slurm daemons together (each takes ~2 s to shut down), munged after them
  stop_pids slurm "$dir"/run/slurmd-*.pid "$dir/run/slurmctld.pid"
  stop_pids munged "$dir/run/munged.pid"
  log "stopped the cluster in $dir"
}

cmd_status() {
  local dir=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --dir) dir=$2; shift 2 ;;
      *) usage ;;
    esac
  done
  [ -n "$dir" ] || die "status needs --dir DIR"
  export SLURM_CONF="$dir/slurm.conf"
  sinfo -N && squeue
}

[ $# -ge 1 ] || usage
cmd=$1; shift
case "$cmd" in
  install) cmd_install "$@" ;;
  start) cmd_start "$@" ;;
  stop) cmd_stop "$@" ;;
  status) cmd_status "$@" ;;
  *) usage ;;
esac
