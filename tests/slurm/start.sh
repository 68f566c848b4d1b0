#!/usr/bin/env bash
# A real one-node SLURM cluster on the loopback address, for the tests marked `slurm` (tests/test_slurm.py).
#
#   tests/slurm/start.sh        # as root: installs the Debian packages if missing, then starts
#                               # munged, mariadbd, slurmdbd, slurmctld and slurmd (in this order)
#   tests/slurm/stop.sh         # ends exactly the processes start.sh started (pid files)
#
# Everything lives in $ALPHASTOMICS_SLURM_DIR (default /tmp/alphastomics-slurm): the configuration, the
# munge key, the MariaDB data, spool folders, logs (log/) and one pid file per daemon (pid/). Outside it,
# only /etc/slurm/slurm.conf, a link to $ALPHASTOMICS_SLURM_DIR/etc/slurm.conf (SLURM's commands look
# there), and munged's socket in /run/munge are written; no system service is touched (there is no systemd
# here). Ports are uncommon ones on 127.0.0.1. Idempotent: a daemon whose pid file names a live process of
# that program is kept; an existing /etc/slurm/slurm.conf of another cluster stops the script.
#
# The cluster (ClusterName alphastomics): one node, `localhost`, with this machine's CPUs and its memory
# less 1 GiB, in two partitions, `cpu` (the default) and `gpu`, both with the same node; account
# `alphastomics_test` (root is its user), associations enforced, so a job with another account is refused as
# on a real cluster. GPUs: the node declares 2 GPUs (GRES gpu, type stand_in) whose device files are
# stand-ins with /dev/null's device numbers ($DIR/dev/fakegpu0, 1): SLURM schedules, counts and records `--gpus=N`
# requests and sets CUDA_VISIBLE_DEVICES as on a GPU node, but there is no GPU and no driver, so torch sees
# no CUDA device and the job trains on the CPU. The tests check what the workflow asks SLURM for and what
# the jobs do with it, not GPU execution.
set -euo pipefail

DIR=${ALPHASTOMICS_SLURM_DIR:-/tmp/alphastomics-slurm}
CLUSTER=alphastomics
ACCOUNT=alphastomics_test
CTLD_PORT=16817 SLURMD_PORT=16818 DBD_PORT=16819 DB_PORT=16306
GPUS=2
GPU_TYPE=stand_in  # a GPU type, as clusters name theirs (sbatch --gpus=stand_in:1 asks for it)
PACKAGES="slurmctld slurmd slurmdbd slurm-client munge mariadb-server"

say() { echo "tests/slurm/start.sh: $*" >&2; }
die() { say "$*"; exit 1; }

# --- packages ---------------------------------------------------------------------------------------
missing=""
for cmd in slurmctld slurmd slurmdbd sbatch munged mariadbd mariadb-install-db; do
  command -v "$cmd" >/dev/null || missing="$missing $cmd"
done
if [ -n "$missing" ]; then
  [ "$(id -u)" = 0 ] || die "not installed:$missing; as root this script installs them (apt-get install $PACKAGES)"
  command -v apt-get >/dev/null || die "not installed:$missing, and apt-get is not available to install them"
  say "installing $PACKAGES"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $PACKAGES >/dev/null
fi
[ "$(id -u)" = 0 ] || die "must run as root (the daemons run as root in this test cluster)"

mkdir -p "$DIR"/{etc,pid,log,munge,spool/ctld,spool/d,db}
chmod 700 "$DIR/munge"
exec 9>"$DIR/.lock"
flock 9  # two callers at once (two pytest workers) start one cluster

alive() {  # alive NAME: the pid file names a live process of that program
  local pid
  pid=$(cat "$DIR/pid/$1.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ -d "/proc/$pid" ] && grep -q "$1" "/proc/$pid/cmdline" 2>/dev/null
}

launch() {  # launch NAME CMD...: start CMD in its own session, in the foreground mode of the daemon
  local name=$1; shift
  if alive "$name"; then say "$name already running (pid $(cat "$DIR/pid/$name.pid"))"; return; fi
  setsid "$@" >>"$DIR/log/$name.log" 2>&1 < /dev/null 9>&- &  # 9: the lock, not for the daemon
  echo $! > "$DIR/pid/$name.pid"
  say "started $name (pid $!)"
}

wait_for() {  # wait_for NAME SECONDS CMD...: until CMD succeeds; fails at once if daemon NAME has died
  local what=$1 seconds=$2; shift 2
  for _ in $(seq "$((seconds * 5))"); do
    timeout 10 "$@" >/dev/null 2>&1 && return 0
    [ ! -e "$DIR/pid/${what%% *}.pid" ] || alive "${what%% *}" || die "$what exited; see $DIR/log/${what%% *}.log"
    sleep 0.2
  done
  die "$what did not come up within ${seconds} s; see $DIR/log/"
}

# --- configuration (rewritten on every start, from this machine's CPUs and memory) ---------------------
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024 ))
[ "$MEM_MB" -ge 2000 ] || MEM_MB=2000
[ -s "$DIR/munge/munge.key" ] || { dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none; }
chmod 400 "$DIR/munge/munge.key"
# SLURM's clients (sacctmgr at least, in 22.05) ignore AuthInfo=socket: munged listens on the default socket.
SOCKET=/run/munge/munge.socket.2

before=$(cat "$DIR/etc/slurm.conf" "$DIR/etc/gres.conf" 2>/dev/null | md5sum || true)  # none on a first start
cat > "$DIR/etc/slurm.conf" <<CONF
# Written by tests/slurm/start.sh: a one-node test cluster on 127.0.0.1.
ClusterName=$CLUSTER
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET
StateSaveLocation=$DIR/spool/ctld
SlurmdSpoolDir=$DIR/spool/d
SlurmctldPidFile=$DIR/spool/slurmctld.pid
SlurmdPidFile=$DIR/spool/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=5
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStorageEnforce=associations
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
InactiveLimit=0
KillWait=30
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:$GPU_TYPE:$GPUS State=UNKNOWN
PartitionName=cpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=localhost MaxTime=INFINITE State=UP
CONF
# Stand-in GPU device files (SLURM 22.05 drops a GPU without File=): character devices with /dev/null's
# numbers, so that opening one does nothing (see the header).
mkdir -p "$DIR/dev"
for i in $(seq 0 $((GPUS - 1))); do
  [ -c "$DIR/dev/fakegpu$i" ] || mknod -m 666 "$DIR/dev/fakegpu$i" c 1 3
done
echo "NodeName=localhost Name=gpu Type=$GPU_TYPE File=$DIR/dev/fakegpu[0-$((GPUS - 1))]" > "$DIR/etc/gres.conf"
# slurmd 22.05 loads a cgroup plugin even when no job uses cgroups (proctrack/linuxproc, task/none above).
if [ -e /sys/fs/cgroup/cgroup.controllers ]; then CGROUP=cgroup/v2; else CGROUP=cgroup/v1; fi
printf 'CgroupPlugin=%s\nCgroupMountpoint=/sys/fs/cgroup\n' "$CGROUP" > "$DIR/etc/cgroup.conf"
cat > "$DIR/etc/slurmdbd.conf" <<CONF
AuthType=auth/munge
AuthInfo=socket=$SOCKET
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/spool/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
CONF
chmod 600 "$DIR/etc/slurmdbd.conf"
export SLURM_CONF="$DIR/etc/slurm.conf"  # the daemons read it (and gres.conf, slurmdbd.conf beside it)
# Commands find the cluster at the standard path, /etc/slurm/slurm.conf, a link to this one: inside a job
# the plugin's `srun` runs with every SLURM_* variable removed (SLURM_CONF too), as on a real cluster,
# where the commands find the configuration at that path.
if [ -e /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" != "$SLURM_CONF" ]; then
  die "/etc/slurm/slurm.conf exists and is not this test cluster's; this script leaves another cluster alone"
fi
mkdir -p /etc/slurm
ln -sfn "$SLURM_CONF" /etc/slurm/slurm.conf

# --- munge --------------------------------------------------------------------------------------------
# A munged already answering on the default socket (the system's) is used as it is; otherwise ours, with
# its own key. --force: munged refuses to run as root otherwise.
mkdir -p /run/munge
if alive munged || ! timeout 5 munge -n >/dev/null 2>&1; then
  launch munged munged --foreground --force --key-file="$DIR/munge/munge.key" --socket="$SOCKET" \
  --pid-file="$DIR/munge/munged.pid" --seed-file="$DIR/munge/munge.seed" --log-file="$DIR/log/munged.log"
  wait_for munged 15 munge -n
else
  say "using the munged that already answers on $SOCKET"
fi

# --- MariaDB (slurmdbd's storage) --------------------------------------------------------------------
if [ ! -d "$DIR/db/mysql" ]; then
  mariadb-install-db --no-defaults --datadir="$DIR/db" --user=root --auth-root-authentication-method=socket \
    --skip-test-db >>"$DIR/log/mariadbd.log" 2>&1 || die "mariadb-install-db failed; see $DIR/log/mariadbd.log"
fi
launch mariadbd mariadbd --no-defaults --user=root --datadir="$DIR/db" --socket="$DIR/db/mysqld.sock" \
  --bind-address=127.0.0.1 --port=$DB_PORT --pid-file="$DIR/db/mariadbd.pid" --innodb-buffer-pool-size=64M \
  --skip-name-resolve
wait_for mariadbd 60 mariadb --no-defaults -S "$DIR/db/mysqld.sock" -u root -e "SELECT 1"
mariadb --no-defaults -S "$DIR/db/mysqld.sock" -u root -e "
  CREATE DATABASE IF NOT EXISTS slurm_acct_db;
  CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
  CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"

# --- slurmdbd, the cluster's account and user, then the two daemons ----------------------------------------
launch slurmdbd slurmdbd -D  # reads slurmdbd.conf beside $SLURM_CONF
wait_for slurmdbd 60 timeout 20 sacctmgr -nP list cluster
has() { grep -qw "$1" <<<"$2"; }  # (not a pipe into grep -q: pipefail would see sacctmgr's SIGPIPE)
has "$CLUSTER" "$(timeout 20 sacctmgr -nP list cluster format=cluster)" \
  || timeout 20 sacctmgr -i add cluster "$CLUSTER" >/dev/null
has "$ACCOUNT" "$(timeout 20 sacctmgr -nP list account format=account)" \
  || timeout 20 sacctmgr -i add account "$ACCOUNT" cluster="$CLUSTER" description="AlphaSTomics tests" >/dev/null
has "$ACCOUNT" "$(timeout 20 sacctmgr -nP list assoc user=root account="$ACCOUNT" format=account)" \
  || timeout 20 sacctmgr -i add user root account="$ACCOUNT" cluster="$CLUSTER" >/dev/null
if [ "$before" != "$(cat "$DIR/etc/slurm.conf" "$DIR/etc/gres.conf" | md5sum)" ]; then
  "$(dirname "$0")/stop.sh" slurmd slurmctld  # a changed configuration: restart the two that read it
fi
launch slurmctld slurmctld -D -f "$DIR/etc/slurm.conf"
wait_for slurmctld 30 scontrol ping
launch slurmd slurmd -D -N localhost -f "$DIR/etc/slurm.conf"
IDLE="sinfo -h -n localhost -o %t | grep -qE '^(idle|mix|alloc)\$'"
if ! (wait_for slurmd 20 bash -c "$IDLE") 2>/dev/null; then
  # a node drained by an earlier configuration (state is kept in spool/) comes back with resume
  scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
  wait_for "slurmd (node localhost idle)" 20 bash -c "$IDLE"
fi
say "cluster $CLUSTER is up: partitions $(sinfo -h -o %P | tr '\n' ' ')account $ACCOUNT"
