#!/usr/bin/env bash
# Train the study's EDM2-XS model for K sources with N images each (preset
# edm2-img256-xs-{K}c-{N}) on a latent dataset from convert/build_multisource.sh, with torchrun.
# Re-running the same command resumes from the newest training state in --outdir.
#
# Usage: bash_files/train/train_multisource.sh --data LATENTS.zip --sources K --per-class N
#            --outdir DIR [--gpus INT] [--batch-gpu INT] [--preset NAME] [--duration NIMG]
#            [--seed INT] [--set KEY=VALUE]... [--restart] [--dry-run] [node options]
#
#   --gpus        processes (GPUs) on each node (default 8)
#   --batch-gpu   images per GPU and step; the batch of 2048 is reached by gradient accumulation
#                 (default 32: fits an 80 GB GPU comfortably)
#   --preset      another preset (default edm2-img256-xs-{K}c-{N}, which exists for K in 1, 3,
#                 5, 10 and N in 100, 500, 1000)
#   --duration, --seed, --set, --restart   passed to train_edm2.py (e.g. a shorter trial run)
#   --nnodes, --node-rank, --master-addr, --master-port | --rdzv-endpoint HOST:PORT [--rdzv-id]
#                 several machines: start the same command on each node with its --node-rank
#                 (bash_files/common.sh; bash_files/slurm/ has a SLURM job)
#                 (the batch of 2048 is split over all nodes x --gpus processes; --outdir on
#                 storage that every node sees)
set -euo pipefail
source "$(dirname "$0")/../common.sh"

OPTIONS="data sources per-class outdir gpus batch-gpu preset duration seed set $NODE_OPTIONS"
FLAGS="restart"
data="" sources="" per_class="" outdir="" gpus=8 batch_gpu=32 preset="" duration="" seed=0 restart=""
parse_options "$@"
require data sources per-class outdir
check_int sources "$sources"
check_int per-class "$per_class"
check_int gpus "$gpus"
check_int batch-gpu "$batch_gpu"
check_nodes

args=(--preset "${preset:-edm2-img256-xs-${sources}c-${per_class}}" --data "$data" --outdir "$outdir"
    --batch-gpu "$batch_gpu" --seed "$seed" "${SET_ARGS[@]}")
[ -z "$duration" ] || args+=(--duration "$duration")
[ -z "$restart" ] || args+=(--restart)
torchrun_py "$gpus" train_edm2.py "${args[@]}"
