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
# pid, task/none binds nothing, no accounting), root as SlurmUser. Two slurmd run on this machine, nodes
# `sftpipe1` and `sftpipe2` at 127.0.0.1 (Debian builds Slurm with multiple-slurmd support), so a job can ask
# for 2 nodes and the multi-node launch is tested for real. The names need not resolve: the sbatch script
# meets at the first node's NodeAddr.
#
# Exit status: 0 when Slurm is up. Non-zero, with the reason, when it could not be set up; the tests marked
# `slurm` then skip and say why, and .ci/run, which requires Slurm, fails.
set -uo pipefail

MARK="# written by sftpipe scripts/slurm-local.sh"
CONF=/etc/slurm/slurm.conf
LOGS=/var/log/slurm
HOST=$(hostname -s)
NODES="sftpipe1 sftpipe2"

fail() { echo "slurm-local: $*" >&2; exit 1; }

# every node's state, e.g. "idle idle"
node_states() { sinfo -h -N -o %T 2>/dev/null | tr '\n' ' '; }

nodes_usable() {
    local state
    scontrol ping 2>/dev/null | grep -q UP || return 1
    [ "$(sinfo -h -N -o %N 2>/dev/null | wc -l)" = "$(echo $NODES | wc -w)" ] || return 1
    for state in $(node_states); do
        case "$state" in idle*|mixed*|allocated*|completing*) ;; *) return 1 ;; esac
    done
}

wanted_config() {
    cat <<EOF
$MARK
ClusterName=sftpipe-ci
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd-%n.log
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
EOF
    # each node offers all of the machine's CPUs: slurmd refuses a node that claims more than it has
    local port=6818 node
    for node in $NODES; do
        echo "NodeName=$node NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$port CPUs=$(nproc) State=UNKNOWN"
        port=$((port + 1))
    done
    echo "PartitionName=debug Nodes=${NODES// /,} Default=YES MaxTime=INFINITE State=UP"
}

if command -v scontrol >/dev/null 2>&1 && [ -r "$CONF" ] && [ "$(cat "$CONF")" = "$(wanted_config)" ] \
   && nodes_usable; then
    echo "slurm-local: Slurm is already up (nodes $NODES: $(node_states))"
    exit 0
fi

[ "$(id -u)" = 0 ] || fail "needs root to install and start slurmctld, slurmd and munged (run it with sudo)"

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
   || ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || fail "slurmctld/slurmd/sbatch/munged are not installed and there is no apt-get"
    echo "slurm-local: installing slurmctld, slurmd, slurm-client and munge with apt-get"
    # The packages start their services on install, which fails without a slurm.conf and fails the install.
    # A policy-rc.d that says no (Docker images ship one) keeps them from starting; this script starts them.
    policy=/usr/sbin/policy-rc.d added_policy=
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && added_policy=1
    fi
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge >/dev/null
    installed=$?
    [ -z "$added_policy" ] || rm -f "$policy"
    [ "$installed" = 0 ] || fail "apt-get could not install slurm-wlm and munge"
fi

if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    fail "$CONF exists and was not written by this script: not touching a real cluster's config"
fi
mkdir -p /etc/slurm /var/spool/slurmctld "$LOGS" /run/munge
for node in $NODES; do mkdir -p "/var/spool/slurmd/$node"; done
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
for pidfile in /run/slurmd*.pid /run/slurmctld.pid; do
    pid=$(cat "$pidfile" 2>/dev/null)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
done
/usr/sbin/slurmctld || fail "slurmctld did not start (see $LOGS/slurmctld.log)"
for node in $NODES; do
    /usr/sbin/slurmd -N "$node" || fail "slurmd for node $node did not start (see $LOGS/slurmd-$node.log)"
done

for _ in $(seq 60); do
    if nodes_usable; then
        echo "slurm-local: Slurm is up: nodes $NODES, $(nproc) CPUs each: $(node_states)"
        exit 0
    fi
    for node in $NODES; do  # a node that was down under an earlier config comes back
        case "$(sinfo -h -n "$node" -o %T 2>/dev/null)" in
            down*|drain*) scontrol update nodename="$node" state=resume >/dev/null 2>&1 ;;
        esac
    done
    sleep 0.5
done
fail "the nodes did not become idle within 30 s ($(node_states)); see $LOGS/slurmctld.log and $LOGS/slurmd-*.log"
