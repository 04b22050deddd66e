#!/usr/bin/env bash
# A real single-node SLURM on this machine, for the tests and for trying the cluster path locally.
#
#   launchers/local_slurm.sh install   apt-get the Debian packages (skipped when already there)
#   launchers/local_slurm.sh up        install, write the configs, start the daemons, wait for the node
#   launchers/local_slurm.sh down      stop exactly the daemons `up` started (by their recorded PIDs)
#   launchers/local_slurm.sh status    say whether it is up
#
# Needs root and Debian (apt-get), no systemd: every daemon is started by hand and its PID recorded in
# $STATE. Accounting (slurmdbd on MariaDB) is included: without it `sacct` fails, submitit warns on every
# poll and never learns that a killed job ended, so a sweep driver could wait forever.
# The node declares one CPU more than the machine has: the slot of the sweep driver (launchers/sweep.sh),
# which sleeps while its cells run. slurmd runs under `nice` (SLURM_NICE, default 10), and so do the jobs.
set -euo pipefail

STATE=${SLURM_STATE_DIR:-/run/sft_knowledge_slurm}
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
MARK="# written by sft_knowledge launchers/local_slurm.sh"
HOST=$(hostname -s)
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)  # start order; stopped in reverse

die() { echo "local_slurm: $*" >&2; exit 1; }
alive() { [[ -f $STATE/$1.pid ]] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }
wait_for() {  # wait_for <seconds> <what> <command...>
    local limit=$1 what=$2; shift 2
    for ((i = 0; i < limit * 4; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
    die "$what did not come up in ${limit}s (logs: /var/log/slurm, /var/log/mysql)"
}

can_run() {
    [[ $(id -u) == 0 ]] || { echo "needs root (this is uid $(id -u))"; return 1; }
    command -v apt-get >/dev/null || { echo "needs Debian's apt-get"; return 1; }
    return 0
}

install_packages() {
    local why; why=$(can_run) || die "$why"
    local missing=0
    for bin in slurmctld slurmd slurmdbd sbatch munged mariadbd; do command -v "$bin" >/dev/null || missing=1; done
    ((missing)) || return 0
    echo "local_slurm: installing slurm, munge, slurmdbd, mariadb (apt-get)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        slurmctld slurmd slurm-client slurmdbd munge mariadb-server) >/tmp/local_slurm_apt.log 2>&1 \
        || die "apt-get failed, see /tmp/local_slurm_apt.log"
}

# The machine's cores: nproc alone reports OMP_NUM_THREADS when it is set (1 on shared cores), and a node of 1 + 1
# CPUs runs an array one task at a time.
cores() { env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc; }

write_configs() {
    for f in $CONF $DBD_CONF; do
        [[ ! -f $f ]] || head -1 "$f" | grep -qF "$MARK" || die "$f exists and was not written by this script; not touching it"
    done
    local mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))
    cat >$CONF <<EOF
$MARK
ClusterName=localcluster
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10    # a requeued job may start again after this many seconds (default 120)
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=5
MinJobAge=300
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$(( $(cores) + 1 )) RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
    cat >$DBD_CONF <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=slurm
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
PidFile=/run/slurm/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
EOF
    chown slurm:slurm $DBD_CONF && chmod 600 $DBD_CONF
}

start() {  # start <name> <command...>: run it in the background, record its PID
    setsid "${@:2}" </dev/null >>"/var/log/slurm/$1.out" 2>&1 &
    echo $! >"$STATE/$1.pid"
}

up() {
    install_packages
    mkdir -p "$STATE"
    if alive slurmd && alive slurmctld; then echo "local_slurm: already up"; return 0; fi
    local t0=$SECONDS
    write_configs
    install -d -o munge -g munge /run/munge
    install -d -o mysql -g mysql /run/mysqld
    install -d -o slurm -g slurm /run/slurm /var/spool/slurmctld /var/log/slurm
    install -d /var/spool/slurmd
    alive munged || start munged setpriv --reuid munge --regid munge --init-groups munged -F
    wait_for 10 munge munge -n
    alive mariadbd || start mariadbd mariadbd --user=mysql --bind-address=127.0.0.1 --socket=/run/mysqld/mysqld.sock
    wait_for 30 mariadb mariadb -e "select 1"
    mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db; CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
                GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
    alive slurmdbd || start slurmdbd slurmdbd -D
    wait_for 30 slurmdbd sacctmgr -n list cluster
    sacctmgr -i -Q add cluster localcluster >/dev/null 2>&1 || true  # already there after the first start
    alive slurmctld || start slurmctld slurmctld -D -i
    alive slurmd || start slurmd nice -n "${SLURM_NICE:-10}" slurmd -D
    wait_for 60 "the node" bash -c "sinfo -h -N -o %t | grep -qx idle"
    echo "local_slurm: up in $((SECONDS - t0))s ($(sinfo -h -N -o '%N %c CPUs %m MB %t'))"
}

down() {
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
        local name=${DAEMONS[i]}
        [[ -f $STATE/$name.pid ]] || continue
        local pid; pid=$(cat "$STATE/$name.pid")
        if kill "$pid" 2>/dev/null; then
            for ((j = 0; j < 80; j++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
            kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$STATE/$name.pid"
    done
    echo "local_slurm: down"
}

status() {
    if alive slurmctld && alive slurmd; then sinfo; else echo "local_slurm: not running"; return 1; fi
}

case ${1:-} in
    can-run) can_run ;;
    install) install_packages ;;
    up | down | status) "$1" ;;
    *) sed -n '2,13p' "$0" | cut -c3-; exit 2 ;;
esac
