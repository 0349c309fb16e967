#!/usr/bin/env bash
# A one-node Slurm cluster on this machine (slurmctld + slurmd on localhost, munge for auth), so the tests marked
# `slurm` can submit the shipped configs/slurm/sftpipe.sbatch to a real Slurm. CI runs it as root on Debian 12.
#
# Idempotent: a controller that already answers with an idle node is left as it is. It installs slurm-wlm's
# daemons and munge with apt-get when they are missing, writes /etc/slurm/slurm.conf (only where there is none,
# or where it is the one this script wrote: a real cluster's config is never touched), starts munged, slurmctld
# and slurmd, and waits until the node is idle.
#
# The config works in a container: no cgroup plugins (proctrack/linuxproc tracks a job's processes by parent
# pid, task/none binds nothing, no accounting gather), root as SlurmUser, every path under /var.
#
# Exit status: 0 when Slurm is up. Non-zero with the reason printed when it could not be set up; the tests
# marked `slurm` then skip with that reason, and .ci/run, which requires Slurm, fails.
set -uo pipefail

MARK="# written by sftpipe scripts/slurm-local.sh"
CONF=/etc/slurm/slurm.conf
LOGS=/var/log/slurm

fail() { echo "slurm-local: $*" >&2; exit 1; }

node_state() { sinfo -h -N -o %T 2>/dev/null | head -n1; }

if command -v scontrol >/dev/null 2>&1 && scontrol ping 2>/dev/null | grep -q UP \
   && [[ "$(node_state)" == idle* || "$(node_state)" == mixed* || "$(node_state)" == allocated* ]]; then
    echo "slurm-local: Slurm is already up ($(node_state))"
    exit 0
fi

[ "$(id -u)" = 0 ] || fail "needs root to install and start slurmctld, slurmd and munged (run it with sudo)"

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
   || ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || fail "slurmctld/slurmd/sbatch/munged are not installed and there is no apt-get"
    echo "slurm-local: installing slurmctld, slurmd, slurm-client and munge with apt-get"
    # policy-rc.d in containers keeps the packages' services from starting; this script starts them itself
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge >/dev/null || fail "apt-get could not install slurm-wlm and munge"
fi

if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    fail "$CONF exists and was not written by this script: not touching a real cluster's config"
fi

HOST=$(hostname -s)
CPUS=$(nproc)
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOGS" /run/munge
cat >"$CONF" <<EOF
$MARK
ClusterName=sftpipe-ci
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
# a requeued or cancelled job's processes get SIGTERM, then SIGKILL this many seconds later
KillWait=10
SchedulerType=sched/backfill
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF

if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile /etc/munge/munge.key 2>/dev/null \
        || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null
chmod 0400 /etc/munge/munge.key
chmod 0755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged || fail "munged did not start (see /var/log/munge/munged.log)"
fi

# a daemon left over from an earlier start with another config is restarted with this one
for daemon in slurmctld slurmd; do
    pid=$(cat "/run/$daemon.pid" 2>/dev/null)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        scontrol reconfigure >/dev/null 2>&1 || true
    fi
done
pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld || fail "slurmctld did not start (see $LOGS/slurmctld.log)"
pgrep -x slurmd >/dev/null || /usr/sbin/slurmd || fail "slurmd did not start (see $LOGS/slurmd.log)"

for _ in $(seq 60); do
    state=$(node_state)
    case "$state" in
        idle*|mixed*|allocated*) echo "slurm-local: Slurm is up: node $HOST, $CPUS CPUs, $state"; exit 0 ;;
        down*|drain*) scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 ;;
    esac
    sleep 0.5
done
fail "the node did not become idle within 30 s (state '${state:-unknown}'); see $LOGS/slurmctld.log and $LOGS/slurmd.log"
