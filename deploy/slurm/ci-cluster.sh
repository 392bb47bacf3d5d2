#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for tests/test_slurm.py (CI) and for trying
# deploy/slurm/kpms-job.sbatch by hand. Installs Debian's slurmctld, slurmd, slurm-client
# and munge if missing, writes /etc/slurm/slurm.conf (and gres.conf: two GPU "devices" that
# are /dev/null and /dev/zero, so the sbatch script's GPU request is scheduled unchanged, two
# jobs at a time, on a machine with no GPU), and starts munged, slurmctld and slurmd without
# systemd.
#
#   sudo deploy/slurm/ci-cluster.sh          start (or confirm) the cluster
#   sudo deploy/slurm/ci-cluster.sh stop     stop the daemons it started
#
# Idempotent: a running, healthy cluster with the same config is left alone. Runs
# non-interactively as root. It takes over /etc/slurm: use it on a CI or scratch machine,
# not on a host that belongs to a real cluster.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

[ "$(id -u)" -eq 0 ] || { echo "ci-cluster.sh: must run as root" >&2; exit 2; }

PIDFILES=(/run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid)

running() {  # running PIDFILE: the daemon recorded there is alive
    local pid
    pid=$(cat "$1" 2>/dev/null) && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

stop_all() {  # only the daemons this script started, by the pid files it configured
    for f in "${PIDFILES[@]}"; do
        running "$f" && kill "$(cat "$f" 2>/dev/null)" 2>/dev/null || true
    done
    for _ in $(seq 100); do
        local alive=0
        for f in "${PIDFILES[@]}"; do running "$f" && alive=1; done
        [ "$alive" -eq 0 ] && return 0
        sleep 0.2
    done
    echo "ci-cluster.sh: a daemon did not stop (pid files ${PIDFILES[*]})" >&2
    return 1
}

if [ "${1:-start}" = stop ]; then
    stop_all
    echo "ci-cluster.sh: stopped"
    exit 0
fi

missing=()
for p in slurmctld slurmd slurm-client munge; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    apt-get update -q
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d   # no daemon starts from a package
    chmod +x /usr/sbin/policy-rc.d
    apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confold "${missing[@]}"
    rm -f /usr/sbin/policy-rc.d
fi

host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
conf=$(cat <<CONF
# written by deploy/slurm/ci-cluster.sh: a single-node test cluster
ClusterName=kpmsci
SlurmctldHost=${host}
AuthType=auth/munge
SlurmUser=slurm
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobRequeue=1
SchedulerParameters=bf_interval=5
SchedulerTimeSlice=5
MinJobAge=600
KillWait=30
GresTypes=gpu
NodeName=${host} CPUs=${cpus} RealMemory=${mem_mb} Gres=gpu:2 State=UNKNOWN
PartitionName=ci Nodes=${host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
)
gres="NodeName=${host} Name=gpu File=/dev/null
NodeName=${host} Name=gpu File=/dev/zero"

mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
chown slurm:slurm /var/spool/slurmctld /var/log/slurm
chown munge:munge /run/munge
chmod 0755 /run/munge

changed=0
if [ "$(cat /etc/slurm/slurm.conf 2>/dev/null)" != "$conf" ] || [ "$(cat /etc/slurm/gres.conf 2>/dev/null)" != "$gres" ]; then
    printf '%s\n' "$conf" > /etc/slurm/slurm.conf
    printf '%s\n' "$gres" > /etc/slurm/gres.conf
    changed=1
fi

healthy() {
    scontrol ping 2>/dev/null | grep -q 'is UP' \
        && sinfo -h -n "$host" -o '%t' 2>/dev/null | grep -Eq '^(idle|mix|alloc)'
}

if [ "$changed" -eq 0 ] && healthy; then
    echo "ci-cluster.sh: cluster already up ($(sinfo -h -o '%P %D %t' | head -1))"
    exit 0
fi
[ "$changed" -eq 1 ] && stop_all

if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
running /run/munge/munged.pid || runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
for _ in $(seq 50); do munge -n </dev/null >/dev/null 2>&1 && break; sleep 0.2; done
munge -n </dev/null | unmunge >/dev/null || { echo "ci-cluster.sh: munge does not work" >&2; exit 1; }

running /run/slurmctld.pid || /usr/sbin/slurmctld
running /run/slurmd.pid || /usr/sbin/slurmd
for _ in $(seq 100); do
    if healthy; then
        echo "ci-cluster.sh: cluster up ($(sinfo -h -o '%P %D %t' | head -1))"
        exit 0
    fi
    # a node left DOWN/DRAIN by an earlier run of the daemons comes back here
    scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
    sleep 0.3
done
echo "ci-cluster.sh: the cluster did not come up; logs:" >&2
tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
exit 1
