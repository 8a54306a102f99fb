#!/usr/bin/env bash
# Multi-host training with jax.distributed: one `jaxmat train` process per node.
#
#   sbatch --nodes 4 --ntasks-per-node 4 --gpus-per-task 1 scripts/train_cluster.sh config.json run/
#
# One task per GPU: under SLURM (srun), jax.distributed reads the coordinator, process count and rank
# from SLURM's variables and gives each task the GPU its SLURM_LOCALID names. Each batch is split over
# all GPUs of all nodes, and process 0 alone writes checkpoints, metrics and models into the workdir,
# which every node must see (a shared filesystem; the run checks that all start from one state).
# Without SLURM, start one process per host yourself with
#   JAXMAT_COORDINATOR=<host0>:<port> JAXMAT_NUM_PROCESSES=<N> JAXMAT_PROCESS_ID=<i> jaxmat train ...
# Resume a stopped run by adding --resume (any number of nodes or devices).
set -euo pipefail
config=${1:?usage: train_cluster.sh CONFIG WORKDIR [jaxmat train options]}
workdir=${2:?usage: train_cluster.sh CONFIG WORKDIR [jaxmat train options]}
shift 2
if [[ -n "${SLURM_JOB_ID:-}" && -z "${SLURM_STEP_ID:-}" ]]; then
  exec srun --kill-on-bad-exit=1 jaxmat train "$config" --workdir "$workdir" "$@"
fi
exec jaxmat train "$config" --workdir "$workdir" "$@"
