#!/usr/bin/env bash
# Start a real single-node SLURM (munged, slurmctld, slurmd from Debian packages) on this
# machine, for the cluster-path test. Needs root; no systemd, no cgroups. Everything lives under
# $BASE except the Debian packages and the symlink /etc/slurm/slurm.conf (stop.sh removes it).
#   BASE=/tmp/tag2mask-slurm FAKE_GPUS=2 bash tests/slurm/start.sh
set -euo pipefail
BASE=${BASE:-/tmp/tag2mask-slurm}
NODE=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 - 1024 ))
# Placeholder GPUs: scheduling only (rules asking for gpu=1 get a slot; torch sees no CUDA).
FAKE_GPUS=${FAKE_GPUS:-2}

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurmctld slurmd slurm-client munge
fi
getent hosts "$NODE" >/dev/null || echo "127.0.0.1 $NODE" >> /etc/hosts

mkdir -p "$BASE"/{etc,state,spool,log,run,munge,fakedev}
chmod 755 "$BASE"
[ -s "$BASE/munge/munge.key" ] || dd if=/dev/urandom bs=1 count=1024 of="$BASE/munge/munge.key" 2>/dev/null
chown -R munge:munge "$BASE/munge"
chmod 400 "$BASE/munge/munge.key"
chmod 755 "$BASE/munge"
runuser -u munge -- /usr/sbin/munged --socket="$BASE/munge/munge.socket.2" \
  --key-file="$BASE/munge/munge.key" --pid-file="$BASE/munge/munged.pid" \
  --log-file="$BASE/munge/munged.log" --seed-file="$BASE/munge/munged.seed"

GRES_NODE=""; GRES_TYPES=""
if [ "$FAKE_GPUS" -gt 0 ]; then
  GRES_NODE=" Gres=gpu:${FAKE_GPUS}"; GRES_TYPES="GresTypes=gpu"
  for i in $(seq 0 $((FAKE_GPUS - 1))); do touch "$BASE/fakedev/nvidia$i"; done
  # SLURM 22.05 drops GPUs without File=: point them at placeholder files
  echo "NodeName=${NODE} Name=gpu File=${BASE}/fakedev/nvidia[0-$((FAKE_GPUS - 1))]" > "$BASE/etc/gres.conf"
fi
cat > "$BASE/etc/slurm.conf" <<EOF
ClusterName=tag2mask
SlurmctldHost=${NODE}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=${BASE}/munge/munge.socket.2
SlurmUser=root
SlurmdUser=root
SlurmctldPort=${SLURMCTLD_PORT:-6817}
SlurmdPort=${SLURMD_PORT:-6818}
StateSaveLocation=${BASE}/state
SlurmdSpoolDir=${BASE}/spool
SlurmctldPidFile=${BASE}/run/slurmctld.pid
SlurmdPidFile=${BASE}/run/slurmd.pid
SlurmctldLogFile=${BASE}/log/slurmctld.log
SlurmdLogFile=${BASE}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without it a job with no memory request takes the whole node
DefMemPerCPU=1000
SchedulerType=sched/backfill
# no accounting database: keep finished jobs visible to squeue for the status checks
MinJobAge=3600
MailProg=/bin/true
ReturnToService=2
${GRES_TYPES}
NodeName=${NODE} CPUs=${CPUS} RealMemory=${MEM_MB}${GRES_NODE} State=UNKNOWN
PartitionName=debug Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
# Snakemake's jobstep plugin strips SLURM_CONF before its inner srun: the config must also be
# at the compiled-in default path.
mkdir -p /etc/slurm
ln -sfn "$BASE/etc/slurm.conf" /etc/slurm/slurm.conf
export SLURM_CONF="$BASE/etc/slurm.conf"
/usr/sbin/slurmctld -c -f "$SLURM_CONF"
/usr/sbin/slurmd -c -f "$SLURM_CONF"
for _ in $(seq 1 60); do
  sinfo -h -o '%t' 2>/dev/null | grep -q idle && break
  sleep 0.5
done
sinfo -h -o '%t' | grep -q idle || { echo "SLURM node not idle: $(scontrol show node "$NODE" | grep -i reason)" >&2; exit 1; }
echo "SLURM up: export SLURM_CONF=$SLURM_CONF"
