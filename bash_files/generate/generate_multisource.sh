#!/usr/bin/env bash
# Sample a trained run source by source: --num images of each of its K sources (class k into
# {outdir}/{snapshot}/class{k}/), from the newest snapshot or the one given.
#
# Usage: bash_files/generate/generate_multisource.sh --run DIR --sources K --outdir DIR
#            [--num INT] [--gpus INT] [--batch INT] [--snapshot FILE] [--steps INT] [--dry-run]
#            [node options]
#
#   --run        training run directory (network-snapshot-*.pkl)
#   --num        images per source (default 5000, as in the study)
#   --gpus       processes (GPUs) on each node (default 1)
#   --snapshot   the snapshot to sample (default: the newest in --run, EMA std 0.050)
#   --nnodes, --node-rank, --master-addr, --master-port | --rdzv-endpoint HOST:PORT [--rdzv-id]
#                several machines: start the same command on each node with its --node-rank
#                (bash_files/common.sh; bash_files/slurm/ has a SLURM job)
#                (each process writes its share of the images: --outdir on storage every node sees)
set -euo pipefail
source "$(dirname "$0")/../common.sh"

OPTIONS="run sources outdir num gpus batch snapshot steps $NODE_OPTIONS"
run="" sources="" outdir="" num=5000 gpus=1 batch=64 snapshot="" steps=""
parse_options "$@"
require run sources outdir
check_int sources "$sources"
check_int num "$num"
check_int gpus "$gpus"
check_nodes
[ -n "$snapshot" ] || snapshot="$(newest_file "$run" 'network-snapshot-*-0.050.pkl')"
name="$(basename "$snapshot" .pkl)"
extra=()
[ -z "$steps" ] || extra+=(--steps "$steps")
for ((k = 0; k < sources; k++)); do
    torchrun_py "$gpus" generate_images.py --net "$snapshot" --outdir "$outdir/$name/class$k" --class "$k" \
        --seeds "0-$((num - 1))" --batch "$batch" "${extra[@]}"
done
