#!/usr/bin/env bash
# Multi-node GPU pretraining under SLURM: one process per node, all GPUs of a node each.
#
#   sbatch --nodes=4 launch/slurm.sh --config=configs/vit_l.py --workdir=/shared/runs/vit_l \
#       --config.data.data_dir=/shared/tensorflow_datasets
#
# jax.distributed.initialize() (--distributed) reads the coordinator, the number
# of processes and this process's id from the SLURM environment. The workdir
# must be on a filesystem every node sees.
#SBATCH --job-name=ebm_pretrain
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --exclusive
#SBATCH --signal=TERM@120
#SBATCH --requeue
set -euo pipefail

repo_dir=${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
cd "$repo_dir"

echo "nodes:   ${SLURM_JOB_NUM_NODES:-?} (${SLURM_JOB_NODELIST:-not under SLURM})"
printf 'run:     srun python3 -m ebm_pretrain.main --distributed'
if [[ $# -gt 0 ]]; then printf ' %q' "$@"; fi
printf '\n'
# --signal=TERM@120 sends SIGTERM two minutes before the time limit: the
# trainer saves a checkpoint and exits with 75 (README, "Failure handling");
# the job then requeues itself and the rerun resumes. Other failures end it.
status=0
srun --kill-on-bad-exit=1 python3 -m ebm_pretrain.main --distributed "$@" || status=$?
if [[ $status -eq 75 && -n "${SLURM_JOB_ID:-}" ]]; then
  echo "stopped with a checkpoint saved (exit 75): requeueing job ${SLURM_JOB_ID}"
  scontrol requeue "${SLURM_JOB_ID}"
fi
exit "$status"
