#!/usr/bin/env bash
# Train one model of the multi-source study on several machines with SLURM: one task per node,
# each running torchrun for the node's GPUs through train/train_multisource.sh with its node rank;
# the first node of the allocation is the rendezvous (torchrun's static rendezvous).
#
# Usage: sbatch --nodes=N bash_files/slurm/train_multisource.sh --data LATENTS.zip --sources K
#            --per-class N --outdir DIR [other options of train/train_multisource.sh]
#        (or the same with bash inside an allocation from salloc)
#
#   Submit from the directory that the relative paths mean (SLURM starts the job there), with
#   REPO_ROOT set to this repository, or from the repository root. --outdir must be on storage
#   that every node sees. Re-submitting the same command resumes the run (e.g. after a time
#   limit or pre-emption: SIGTERM saves a training state). MASTER_PORT overrides the port 29500.
#   Every task runs:
#     train/train_multisource.sh OPTIONS --nnodes $SLURM_JOB_NUM_NODES --node-rank $SLURM_NODEID
#         --master-addr FIRST_NODE --master-port 29500
#     -> torchrun --nnodes=N --node-rank=R --master-addr=FIRST_NODE --master-port=29500
#         --nproc_per_node=GPUS -- train_edm2.py ...
#
#SBATCH --job-name=multisource-train
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=2-00:00:00
#SBATCH --signal=TERM@120
set -euo pipefail

repo="${REPO_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}"
if [ ! -f "$repo/bash_files/train/train_multisource.sh" ]; then
    echo "error: $repo is not this repository's root; set REPO_ROOT" >&2
    exit 2
fi
if [ -z "${SLURM_JOB_NODELIST:-}" ] || [ -z "${SLURM_JOB_NUM_NODES:-}" ]; then
    echo "error: not inside a SLURM job; submit with sbatch (or run inside salloc)" >&2
    exit 2
fi
first_node="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
port="${MASTER_PORT:-29500}"
echo "SLURM job ${SLURM_JOB_ID:-?}: $SLURM_JOB_NUM_NODES nodes ($SLURM_JOB_NODELIST), rendezvous at $first_node:$port"
# Each task adds its own node rank: $SLURM_NODEID is set per task, so it is read inside the task.
# shellcheck disable=SC2016
srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c 'exec bash "$0" "$@" --node-rank "$SLURM_NODEID"' \
    "$repo/bash_files/train/train_multisource.sh" "$@" --nnodes "$SLURM_JOB_NUM_NODES" --master-addr "$first_node" --master-port "$port"
