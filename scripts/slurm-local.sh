#!/usr/bin/env bash
# A one-node Slurm cluster on this machine (slurmctld + slurmd on localhost, munge for auth), so the tests marked
# `slurm` can submit the shipped configs/slurm/sftpipe.sbatch to a real Slurm. CI runs it as root on Debian 12.
#
# Idempotent: when the config is already this one and the controller answers with a usable node, it does
# nothing. Otherwise it installs Debian's slurmctld, slurmd, slurm-client and munge with apt-get when they are
# missing, writes /etc/slurm/slurm.conf (only where there is none, or where it is the one this script wrote: a
# real cluster's config is never touched), starts munged, (re)starts slurmctld and slurmd, and waits until the
# node is idle.
#
# The config works in a container: no cgroup plugins (proctrack/linuxproc tracks a job's processes by parent
# pid, task/none binds nothing, no accounting), root as SlurmUser. The node is called `localhost`, so the jobs'
# rendezvous address (the allocation's first node name) resolves anywhere.
#
# Exit status: 0 when Slurm is up. Non-zero, with the reason, when it could not be set up; the tests marked
# `slurm` then skip and say why, and .ci/run, which requires Slurm, fails.
set -uo pipefail

MARK="# written by sftpipe scripts/slurm-local.sh"
CONF=/etc/slurm/slurm.conf
LOGS=/var/log/slurm
NODE=localhost

fail() { echo "slurm-local: $*" >&2; exit 1; }

node_state() { sinfo -h -N -o %T 2>/dev/null | sed -n 1p; }

node_usable() {
    scontrol ping 2>/dev/null | grep -q UP || return 1
    case "$(node_state)" in idle*|mixed*|allocated*|completing*) return 0 ;; *) return 1 ;; esac
}

wanted_config() {
    cat <<EOF
$MARK
ClusterName=sftpipe-ci
SlurmctldHost=$(hostname -s)(127.0.0.1)
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
NodeName=$NODE NodeHostname=$(hostname -s) NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

if command -v scontrol >/dev/null 2>&1 && [ -r "$CONF" ] && [ "$(cat "$CONF")" = "$(wanted_config)" ] \
   && node_usable; then
    echo "slurm-local: Slurm is already up (node $NODE, $(node_state))"
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
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOGS" /run/munge
wanted_config >"$CONF"

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

# daemons started earlier (by this script, from their pid files) run with an older config: start them afresh
for daemon in slurmd slurmctld; do
    pid=$(cat "/run/$daemon.pid" 2>/dev/null)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
done
/usr/sbin/slurmctld || fail "slurmctld did not start (see $LOGS/slurmctld.log)"
/usr/sbin/slurmd || fail "slurmd did not start (see $LOGS/slurmd.log)"

for _ in $(seq 60); do
    state=$(node_state)
    case "$state" in
        idle*|mixed*|allocated*) echo "slurm-local: Slurm is up: node $NODE, $(nproc) CPUs, $state"; exit 0 ;;
        down*|drain*) scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 ;;
    esac
    sleep 0.5
done
fail "the node did not become idle within 30 s (state '${state:-unknown}'); see $LOGS/slurmctld.log and $LOGS/slurmd.log"
