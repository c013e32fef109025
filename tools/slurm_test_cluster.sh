#!/usr/bin/env bash
# A one-machine Slurm cluster for the tests of `tools.reproduce --executor slurm` (pytest -m slurm).
#
#   sudo tools/slurm_test_cluster.sh          # install (Debian/Ubuntu packages), configure, start
#   tools/slurm_test_cluster.sh --stop        # stop the daemons it started
#
# Debian's slurm-wlm packages (slurmctld, slurmd, munge), configured for this host only: one node
# named after `hostname -s`, reached on 127.0.0.1, partition `debug`, with the node's CPUs and
# two generic resources `gpu` (a count, no device file: the jobs run on the CPU) so that
# `--gpus-per-node 1` schedules as it does on a GPU cluster. Root runs the daemons (no slurm
# user setup). Idempotent: a second run leaves a running cluster as it is and only waits for the
# node to be idle. Needs root and the Debian package mirror; nothing else leaves the machine.
set -euo pipefail

CONF=/etc/slurm
GPUS=${SLURM_TEST_GPUS:-2}

stop() {
    # Each daemon is waited for: one that is still shutting down would delete the pid file of
    # its successor, and hold its port.
    for name in slurmd slurmctld munged; do
        if [ -f "/run/slurm-test/$name.pid" ]; then
            pid=$(cat "/run/slurm-test/$name.pid")
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 100); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.3
            done
            rm -f "/run/slurm-test/$name.pid"
        fi
    done
}

if [ "${1:-}" = "--stop" ]; then
    stop
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "slurm_test_cluster.sh: expected to run as root (it installs packages and starts daemons); got uid $(id -u)" >&2
    exit 2
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi

host=$(hostname -s)
cpus=$(nproc)
mkdir -p "$CONF" /run/slurm-test /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
cat > "$CONF/slurm.conf.new" <<CONFIG
# Written by tools/slurm_test_cluster.sh: a one-node test cluster on $host.
ClusterName=longtail-test
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm-test/slurmctld.pid
SlurmdPidFile=/run/slurm-test/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
KillWait=5
MinJobAge=3600
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus Gres=gpu:$GPUS State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONFIG
# Slurm counts a gpu per device file; character devices that every machine has stand in.
files=$(for i in $(seq "$GPUS"); do printf '/dev/fake-gpu%d,' "$((i - 1))"; done)
for i in $(seq "$GPUS"); do
    [ -e "/dev/fake-gpu$((i - 1))" ] || mknod -m 666 "/dev/fake-gpu$((i - 1))" c 1 3  # as /dev/null
done
cat > "$CONF/gres.conf.new" <<CONFIG
NodeName=$host Name=gpu File=${files%,}
CONFIG
changed=0
for name in slurm.conf gres.conf; do
    if ! cmp -s "$CONF/$name.new" "$CONF/$name"; then
        mv "$CONF/$name.new" "$CONF/$name"
        changed=1
    else
        rm "$CONF/$name.new"
    fi
done

running() { [ -f "/run/slurm-test/$1.pid" ] && kill -0 "$(cat "/run/slurm-test/$1.pid")" 2>/dev/null; }
if [ "$changed" = 1 ]; then
    stop
fi

if ! running munged; then
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
    chmod 0400 /etc/munge/munge.key
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
    cp /run/munge/munged.pid /run/slurm-test/munged.pid
fi
if ! running slurmctld; then
    /usr/sbin/slurmctld
fi
if ! running slurmd; then
    /usr/sbin/slurmd
fi

for _ in $(seq 60); do
    state=$(sinfo -h -N -o %t 2>/dev/null | head -n 1 || true)
    case "$state" in
        idle|mix|alloc) echo "slurm_test_cluster.sh: node $host $state (partition debug, gres gpu:$GPUS)"; exit 0 ;;
        drain*|down*) scontrol update NodeName="$host" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 1
done
echo "slurm_test_cluster.sh: expected node $host idle within 60 s; got '${state:-no answer}'; see /var/log/slurm/" >&2
exit 1
